"""Fine-tune a MatterGen model dir on a prepared dataset.

The base model is any MatterGen model dir (config.yaml + checkpoints/last.ckpt): crygen's
embedded one, or one downloaded from MatterGen's release. The output folder is itself a
MatterGen model dir (the base config, retargeted at the new data, and the fine-tuned
checkpoint); DONE.json marks it complete. Re-running an interrupted fine-tune with the same
settings resumes from checkpoints/last.ckpt.
"""

from __future__ import annotations

from pathlib import Path

import click

from crygen.cli import pick_device, seed_everything, stage
from crygen.fileio import CrygenError, read_json, sha256_file


@click.command(help=__doc__)
@click.option("--base-model", required=True, type=click.Path(path_type=Path), help="MatterGen model dir.")
@click.option("--data", required=True, type=click.Path(path_type=Path), help="Dataset folder from prepare_data.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Fine-tune folder to write.")
@click.option("--epochs", default=1, show_default=True, type=click.IntRange(1))
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1))
@click.option("--lr", default=None, type=float, help="Learning rate (default: the base model's).")
@click.option("--seed", default=42, show_default=True, type=int)
@click.option("--device", default="auto", show_default=True)
@stage("finetune")
def main(base_model, data, out, epochs, batch_size, lr, seed, device):
    import numpy as np
    from hydra.utils import instantiate

    from crygen import mattergen_compat as mc
    from crygen.training import fit, mark_done

    mc.check_model_dir(base_model)
    if not (Path(data) / "train" / "pos.npy").is_file():
        raise CrygenError(data, "not a prepared dataset (no train/pos.npy); run prepare_data first")
    dataset = read_json(Path(data) / "dataset.json")
    device = pick_device(device)
    seed_everything(seed)
    mc.ensure_mattergen_files()

    base_config = mc.load_model_config(base_model)
    config = mc.with_data_module(base_config, mc.data_module_config(data, batch_size=batch_size, max_epochs=epochs))
    if lr is not None:
        config["lightning_module"]["optimizer_partial"]["lr"] = lr
    module = instantiate(config["lightning_module"])
    base_ckpt = Path(base_model) / "checkpoints" / "last.ckpt"
    module.load_state_dict(mc.read_checkpoint(base_ckpt)["state_dict"], strict=True)

    settings = {
        "base_checkpoint_sha256": sha256_file(base_ckpt),
        "data_sha256": dataset["input_sha256"],
        "dataset": {k: dataset[k] for k in ("val_fraction", "seed", "max_atoms")},
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
    }
    last, steps = fit(module, config, out, settings, max_epochs=epochs,
               accelerator="gpu" if device.startswith("cuda") else "cpu")

    import yaml

    (Path(out) / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    info = {
        "kind": "crygen fine-tuned model",
        "base_model": str(Path(base_model).resolve()),
        "settings": settings,
        "num_atoms_distribution": mc.num_atoms_distribution(np.load(Path(data) / "train" / "num_atoms.npy")),
    }
    import json

    (Path(out) / mc.CRYGEN_MODEL_INFO).write_text(json.dumps(info, indent=2))
    mark_done(out, {**steps, "device": device})  # the Makefile's target: the model dir is whole
    click.echo(f"finetune: {epochs} epoch(s), {steps['global_step']} steps -> {last}")


if __name__ == "__main__":
    main()
