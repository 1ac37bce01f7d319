"""MatterGen configs made to fit crygen's pinned stack, when they are read, and nowhere else.

MatterGen's published ``config.yaml`` files were written for the stack MatterGen was trained
on (torch 2.2). Whatever in them the pinned stack no longer accepts is changed here, when
``crygen.mattergen.model_dir`` reads a config: each change is an
:class:`Adaptation` with a name, the reason, the versions it was written for, and a test
of whether a config needs it. The configs crygen writes (a fine-tuned model dir, a
model_for_generation dir) are the adapted ones, so MatterGen's own ``CrystalGenerator``
loads them on this stack too; ``crygen_model.json`` lists the adaptations applied.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Iterator


@dataclass(frozen=True)
class Adaptation:
    name: str
    why: str
    written_for: str  # the versions whose behaviour it answers
    needed: Callable[[dict[str, Any]], bool]
    apply: Callable[[dict[str, Any]], None]


def _scheduler_configs(config: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for partial in config.get("lightning_module", {}).get("scheduler_partials") or []:
        scheduler = partial.get("scheduler") if isinstance(partial, dict) else None
        if isinstance(scheduler, dict):
            yield scheduler


def _import_target(target: str) -> Any:
    import importlib

    module, _, attr = target.rpartition(".")
    return getattr(importlib.import_module(module), attr)


def _drops_verbose(scheduler: dict[str, Any]) -> bool:
    """A torch scheduler given ``verbose`` whose constructor no longer takes it."""
    target = str(scheduler.get("_target_", ""))
    if "verbose" not in scheduler or not target.startswith("torch.optim.lr_scheduler."):
        return False
    return "verbose" not in inspect.signature(_import_target(target).__init__).parameters


def _scheduler_verbose_needed(config: dict[str, Any]) -> bool:
    return any(_drops_verbose(s) for s in _scheduler_configs(config))


def _scheduler_verbose_apply(config: dict[str, Any]) -> None:
    for scheduler in _scheduler_configs(config):
        if _drops_verbose(scheduler):
            del scheduler["verbose"]


ADAPTATIONS: tuple[Adaptation, ...] = (
    Adaptation(
        name="lr-scheduler-verbose",
        why="torch removed the deprecated `verbose` argument of its LR schedulers (2.7); MatterGen's "
            "configs set ReduceLROnPlateau(verbose=true), which only printed each LR change",
        written_for="mattergen 1.0.3 configs; torch 2.13 (the argument is kept where torch still takes it)",
        needed=_scheduler_verbose_needed,
        apply=_scheduler_verbose_apply,
    ),
)


def adapt_config(config: dict[str, Any]) -> list[str]:
    """Apply, in place, every adaptation ``config`` needs; return their names."""
    applied = []
    for adaptation in ADAPTATIONS:
        if adaptation.needed(config):
            adaptation.apply(config)
            applied.append(adaptation.name)
    return applied
