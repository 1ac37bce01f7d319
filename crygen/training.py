"""Resumable MatterGen training, shared by ``make base-model`` and ``make finetune``.

A run folder holds ``run.json`` (the settings it was started with), ``checkpoints/last.ckpt``
(rewritten every ``checkpoint_every`` steps and at each epoch end) and, once training ended,
``DONE.json``. Re-running with the same settings resumes from ``last.ckpt``; different
settings start over. A finished run re-run with a larger step or epoch budget continues.

A model dir that others read (the fine-tuned model) is not trained in place: training runs in
:func:`staging_dir` beside it, and :func:`promote` replaces the old dir only once the new one
is complete, so new settings never cost the previous model before a new one exists.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crygen.cli import say
from crygen.fileio import CrygenError, replace_with, write_json

if TYPE_CHECKING:
    from crygen.mattergen.model_dir import ModelDir

PROGRESS_LINES = 5  # at most this many progress lines per run, whatever its length


def _progress_callback(name: str, every: int | None):
    import pytorch_lightning as pl

    class Progress(pl.Callback):
        """A handful of lines per run (every ~10 % of its steps): a log a person can read."""

        def __init__(self) -> None:
            self.start = time.time()
            self.every = every

        def on_train_start(self, trainer, pl_module) -> None:
            if self.every is None:
                total = trainer.estimated_stepping_batches
                total = int(total) if total and total != float("inf") else 0
                self.every = max(1, -(-total // PROGRESS_LINES)) if total else 100

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            step = trainer.global_step
            if step % self.every == 0:
                loss = trainer.callback_metrics.get("loss_train_step")
                loss_text = f"loss {float(loss):.3f}" if loss is not None else "loss not logged yet"
                total = int(trainer.estimated_stepping_batches or 0)
                of = f"/{total}" if 0 < total < float("inf") else ""
                say(f"{name}: epoch {trainer.current_epoch} step {step}{of} {loss_text} "
                    f"({time.time() - self.start:.1f} s)")

    return Progress()


def staging_dir(out: Path) -> Path:
    """Where the model for ``out`` is trained, beside it (same file system: one rename)."""
    out = Path(out)
    return out.with_name(f".{out.name}.staging")


def fit(
    module,
    config: dict[str, Any],
    run_dir: Path,
    settings: dict[str, Any],
    max_epochs: int = -1,
    max_steps: int = -1,
    accelerator: str = "cpu",
    checkpoint_every: int = 50,
    progress_every: int | None = None,
    name: str = "train",
) -> tuple[Path, dict[str, int]]:
    """Train ``module`` on ``config['data_module']`` in ``run_dir``; return ``last.ckpt`` and
    step counts. ``progress_every``: steps between progress lines (None: ~10 % of the run).

    The caller finishes the run folder and then calls :func:`mark_done`."""
    from hydra.utils import instantiate

    run_dir = Path(run_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    resume = _start_or_resume(run_dir, settings, name)
    datamodule = instantiate(config["data_module"])
    trainer = _trainer(config, run_dir, max_epochs, max_steps, accelerator, checkpoint_every, progress_every, name)
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(last) if resume else None)
    trainer.save_checkpoint(str(last))  # the final state, whatever the checkpoint cadence
    return last, {"global_step": trainer.global_step, "epochs": trainer.current_epoch}


def _start_or_resume(run_dir: Path, settings: dict[str, Any], name: str) -> bool:
    """Whether ``run_dir`` holds a run of these ``settings`` to resume; if not, it is emptied
    and started with them."""
    last = run_dir / "checkpoints" / "last.ckpt"
    run_file = run_dir / "run.json"
    previous = json.loads(run_file.read_text()) if run_file.is_file() else None
    resume = previous == settings and last.is_file()
    if not resume:
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        write_json(run_file, settings)
    else:
        say(f"{name}: resuming from {last}")
    return resume


def _trainer(config: dict[str, Any], run_dir: Path, max_epochs: int, max_steps: int, accelerator: str,
             checkpoint_every: int, progress_every: int | None, name: str):
    """Lightning's trainer as crygen trains: float32, clipped gradients, no validation, a
    checkpoint every ``checkpoint_every`` steps and at each epoch end, a few progress lines."""
    import pytorch_lightning as pl
    from mattergen.diffusion.run import AddConfigCallback
    from pytorch_lightning.callbacks import ModelCheckpoint

    return pl.Trainer(
        accelerator=accelerator,
        devices=1,
        precision=32,
        max_epochs=max_epochs,
        max_steps=max_steps,
        gradient_clip_val=0.5,
        gradient_clip_algorithm="value",
        limit_val_batches=0,  # validation is its own stage, paired and seeded
        num_sanity_val_steps=0,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(run_dir),
        callbacks=[
            ModelCheckpoint(
                dirpath=str(run_dir / "checkpoints"),
                save_last=True,
                save_top_k=0,
                every_n_train_steps=checkpoint_every,
                save_on_train_epoch_end=True,
            ),
            AddConfigCallback(config),
            _progress_callback(name, progress_every),
        ],
    )


def mark_done(run_dir: Path, record: dict[str, Any]) -> None:
    """Written last, once everything else in ``run_dir`` is in place."""
    write_json(Path(run_dir) / "DONE.json", record)


MODEL_DIR_FILES = ("config.yaml", "checkpoints/last.ckpt", "DONE.json")


def promote(staging: Path, out: Path, required: tuple[str, ...] = MODEL_DIR_FILES) -> None:
    """Replace ``out`` by the complete ``staging`` dir; an incomplete one replaces nothing."""
    staging, out = Path(staging), Path(out)
    lacking = [f for f in required if not (staging / f).is_file()]
    if lacking:
        raise CrygenError(staging, f"training output incomplete (no {lacking[0]}); {out} left as it was")
    replace_with(staging, out)


# --------------------------------------------------------------------------- fine-tuning


def finetune_module(base: ModelDir, data: Path, definitions: dict[str, dict[str, Any]], mode: str,
                    batch_size: int, epochs: int, lr: float) -> tuple[dict[str, Any], Any, dict[str, dict[str, Any]]]:
    """The config and module that fine-tune ``base`` on the prepared dataset ``data``, with an
    adapter embedding ``definitions`` (none: the base's own architecture), and the base's own
    property definitions. ``mode``: "adapter" trains only the new adapters, "full" everything."""
    from hydra.utils import instantiate

    from crygen import properties as props
    from crygen.mattergen import configs
    from crygen.mattergen import properties as mp

    base_config = base.config
    names = list(definitions)
    # a conditioned base (MatterGen's chemical_system, ...) keeps its conditions; properties
    # the data lacks are embedded unconditionally, as MatterGen does for a missing value
    base_definitions = mp.model_property_definitions(base)
    mp.register_properties(base_definitions)
    if definitions:
        base_config = mp.adapter_config(base_config, definitions)
    config = configs.with_data_module(base_config, configs.data_module_config(
        data, batch_size=batch_size, max_epochs=epochs, properties=names))
    config["lightning_module"]["optimizer_partial"]["lr"] = lr
    base_state = base.checkpoint["state_dict"]
    if definitions:
        module = mp.init_adapter_module(config, base_state, trainable=names if mode == "adapter" else None)
        # a property the base already embeds keeps the scaler it was trained with
        mp.fit_property_scalers(module, {n: props.read_split_values(data, "train", n) for n, d in definitions.items()
                                         if d["kind"] == mp.FLOAT and n not in base_definitions})
    else:
        module = instantiate(config["lightning_module"])
        module.load_state_dict(base_state, strict=True)
    return config, module, base_definitions


def finetuned_model_info(base: ModelDir, data: Path, settings: dict[str, Any], definitions: dict[str, Any],
                         base_definitions: dict[str, Any]) -> dict[str, Any]:
    """The fine-tuned model dir's ``crygen_model.json``: its base, settings, atom counts,
    config adaptations, the base's sampling overrides and every property it takes."""
    import numpy as np

    from crygen.mattergen.num_atoms import num_atoms_distribution

    info = {
        "kind": "crygen fine-tuned model",
        "base_model": str(base.path.resolve()),
        "settings": settings,
        "num_atoms_distribution": num_atoms_distribution(np.load(Path(data) / "train" / "num_atoms.npy")),
    }
    if base.adaptations:
        info["config_adaptations"] = base.adaptations
    base_info = base.info
    if "sampling_overrides" in base_info:  # how the base is sampled holds for its fine-tuned self
        info["sampling_overrides"] = base_info["sampling_overrides"]
    if definitions or base_definitions:
        info["properties"] = {**base_definitions, **definitions}
    return info


def write_finetuned(staging: Path, config: dict[str, Any], info: dict[str, Any]) -> None:
    """The model dir's config and info beside the checkpoint training left in ``staging``."""
    import yaml

    from crygen.fileio import dumps_json
    from crygen.mattergen.model_dir import CRYGEN_MODEL_INFO

    (staging / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (staging / CRYGEN_MODEL_INFO).write_text(dumps_json(info))
