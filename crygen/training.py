"""Resumable MatterGen training, shared by ``make base-model`` and ``make finetune``.

A run folder holds ``run.json`` (the settings it was started with), ``checkpoints/last.ckpt``
(rewritten every ``checkpoint_every`` steps and at each epoch end) and, once training ended,
``DONE.json``. Re-running with the same settings resumes from ``last.ckpt``; different
settings start over. A finished run re-run with a larger step or epoch budget continues.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from crygen.fileio import write_json


def _progress_callback(every: int):
    import pytorch_lightning as pl

    class Progress(pl.Callback):
        """One line every ``every`` steps: logs stay readable where tqdm bars are not."""

        def __init__(self) -> None:
            self.start = time.time()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            step = trainer.global_step
            if step % every == 0 or step == 1:
                loss = trainer.callback_metrics.get("loss_train_step")
                loss = float(loss) if loss is not None else float("nan")
                total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
                of = f"/{total}" if total else ""
                print(
                    f"  epoch {trainer.current_epoch} step {step}{of} loss {loss:.3f} "
                    f"({time.time() - self.start:.0f} s)",
                    file=sys.stderr,
                    flush=True,
                )

    return Progress()


def fit(
    module,
    config: dict[str, Any],
    run_dir: Path,
    settings: dict[str, Any],
    max_epochs: int = -1,
    max_steps: int = -1,
    accelerator: str = "cpu",
    checkpoint_every: int = 50,
    progress_every: int = 10,
) -> tuple[Path, dict[str, int]]:
    """Train ``module`` on ``config['data_module']``; return ``last.ckpt`` and step counts.

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
        print(f"resuming from {last}", file=sys.stderr)

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
            _progress_callback(progress_every),
        ],
    )
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(last) if resume else None)
    trainer.save_checkpoint(str(last))  # the final state, whatever the checkpoint cadence
    return last, {"global_step": trainer.global_step, "epochs": trainer.current_epoch}


def mark_done(run_dir: Path, record: dict[str, Any]) -> None:
    """Written last, once everything else in ``run_dir`` is in place."""
    write_json(Path(run_dir) / "DONE.json", record)
