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
from typing import Any

from crygen.cli import say
from crygen.fileio import CrygenError, replace_with, write_json

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
                    f"({time.time() - self.start:.0f} s)")

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
    import pytorch_lightning as pl
    from hydra.utils import instantiate
    from mattergen.diffusion.run import AddConfigCallback
    from pytorch_lightning.callbacks import ModelCheckpoint

    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    run_file = run_dir / "run.json"

    previous = json.loads(run_file.read_text()) if run_file.is_file() else None
    resume = previous == settings and last.is_file()
    if not resume:
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        write_json(run_file, settings)
    else:
        say(f"{name}: resuming from {last}")

    datamodule = instantiate(config["data_module"])
    trainer = pl.Trainer(
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
                dirpath=str(ckpt_dir),
                save_last=True,
                save_top_k=0,
                every_n_train_steps=checkpoint_every,
                save_on_train_epoch_end=True,
            ),
            AddConfigCallback(config),
            _progress_callback(name, progress_every),
        ],
    )
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(last) if resume else None)
    trainer.save_checkpoint(str(last))  # the final state, whatever the checkpoint cadence
    return last, {"global_step": trainer.global_step, "epochs": trainer.current_epoch}


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
