"""Fine-tune a MatterGen model dir on a prepared dataset.

The base model is any MatterGen model dir (config.yaml + checkpoints/last.ckpt): crygen's
embedded one, or one downloaded from MatterGen's release. The output folder is itself a
MatterGen model dir (the base config, retargeted at the new data, and the fine-tuned
checkpoint); DONE.json marks it complete. Training runs in a staging folder beside the output
(.<name>.staging) and replaces an earlier output only once the new model is complete, so
changed settings never cost the previous model first. Re-running an interrupted fine-tune
with the same settings resumes from the staging folder's checkpoints/last.ckpt.

The learning rate defaults to MatterGen's own fine-tuning rate, 5e-6 (the configs of its
published fine-tuned models; 20x below the 1e-4 its bases were trained at). Fine-tuning starts
a fresh optimizer from a trained model, which MatterGen does at a rate well below its training
rate; --lr sets another.

--properties adds MatterGen's adapter (GemNetTAdapter) embedding those properties of the
prepared dataset; --mode adapter trains only the adapter, full (MatterGen's default) the
whole model. The property definitions go into crygen_model.json for generation.
"""

from __future__ import annotations

from pathlib import Path

import click

from crygen.cli import pick_device, run_script, say, seed_everything, setting_option, stage
from crygen.fileio import CrygenError, read_json, sha256_file

# MatterGen's fine-tuning learning rate: optimizer lr of every published fine-tuned model's
# config (dft_band_gap, dft_mag_density, chemical_system, ...), its base models train at 1e-4
DEFAULT_LR = 5e-6


def parse_lr(text: str | None) -> float:
    """``--lr``: absent or empty takes the default; anything else must be a positive number."""
    import math

    if text is None or not str(text).strip():
        return DEFAULT_LR
    try:
        lr = float(text)
    except ValueError:
        raise CrygenError(None, f"LR={text}: expected a positive number") from None
    if not math.isfinite(lr) or lr <= 0:
        raise CrygenError(None, f"LR={text}: expected a positive number")
    return lr


@click.command(help=__doc__)
@click.option("--base-model", required=True, type=click.Path(path_type=Path), help="MatterGen model dir.")
@click.option("--data", required=True, type=click.Path(path_type=Path), help="Dataset folder from prepare_data.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Fine-tune folder to write.")
@setting_option("EPOCHS", "--epochs", show_default=True, type=click.IntRange(1))
@setting_option("BATCH_SIZE", "--batch-size", show_default=True, type=click.IntRange(1))
@setting_option("LR", "--lr", help=f"Learning rate (default: {DEFAULT_LR:g}, MatterGen's fine-tuning rate).")
@setting_option("SEED", "--seed", show_default=True, type=int)
@setting_option("DEVICE", "--device", show_default=True)
@setting_option("PROPERTIES", "--properties", "property_names", help="Comma-separated properties to condition on.")
@setting_option("FINETUNE_MODE", "--mode", type=click.Choice(["full", "adapter"]), show_default=True,
              help="With --properties: train the whole model or only the adapter.")
@click.option("--max-steps", default=-1, type=int, help="Stop after this many steps (default: the epochs).")
@stage("finetune")
def main(base_model, data, out, epochs, batch_size, lr, seed, device, property_names, mode, max_steps):
    from crygen import properties as props
    from crygen.dataset import PreparedDataset
    from crygen.mattergen.files import ensure_mattergen_files
    from crygen.mattergen.model_dir import ModelDir
    from crygen.training import (finetune_module, finetuned_model_info, fit, mark_done, promote, staging_dir,
                                 write_finetuned)

    lr = parse_lr(lr)
    base = ModelDir(base_model, verify=True)  # its checkpoint read here, once
    dataset = PreparedDataset.open(data, advice="run prepare_data first").record
    device = pick_device(device)
    seed_everything(seed)
    ensure_mattergen_files()
    names = props.parse_names(property_names)
    definitions = _dataset_properties(Path(data), names)
    _check_properties(data, definitions, mode)
    config, module, base_definitions = finetune_module(base, data, definitions, mode, batch_size, epochs, lr)
    settings = {
        "base_checkpoint_sha256": sha256_file(base.checkpoint_path),
        "data_sha256": dataset["input_sha256"],
        "dataset": {k: dataset[k] for k in ("val_fraction", "seed", "max_atoms")},
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
    }
    if definitions:
        settings.update(properties=names, mode=mode)
    if max_steps > 0:
        settings["max_steps"] = max_steps
    staging = staging_dir(out)
    _, steps = fit(module, config, staging, settings, max_epochs=epochs, max_steps=max_steps,
                   accelerator="gpu" if device.startswith("cuda") else "cpu", name="finetune")
    write_finetuned(staging, config, finetuned_model_info(base, data, settings, definitions, base_definitions))
    mark_done(staging, {**steps, "device": device, "lr": lr})  # the Makefile's target: the model dir is whole
    promote(staging, out)
    say(f"finetune: {epochs} epoch(s), {steps['global_step']} steps at learning rate {lr:g} -> {out}")


def _check_properties(data: Path, definitions: dict, mode: str) -> None:
    """Every property to condition on has a training value; adapter mode has properties."""
    from crygen import properties as props
    from crygen.mattergen.properties import CATEGORICAL, FLOAT

    for name, d in definitions.items():
        if d["kind"] in (FLOAT, CATEGORICAL) and all(props.is_missing(v) for v in props.read_split_values(data, "train", name)):
            # its scaler would be fitted on nothing and every conditional embedding be NaN
            raise CrygenError(data, f"property {name!r} has no value in the training split")
    if mode == "adapter" and not definitions:
        raise CrygenError(None, "FINETUNE_MODE=adapter needs PROPERTIES (the adapter embeds them)")


def _dataset_properties(data: Path, names: list[str]) -> dict:
    """The definitions of ``names`` as prepare_data recorded them."""
    if not names:
        return {}
    recorded = read_json(data / "properties.json") if (data / "properties.json").is_file() else {}
    absent = [n for n in names if n not in recorded]
    if absent:
        raise CrygenError(data, f"property {absent[0]!r} was not prepared (prepared: "
                                f"{', '.join(recorded) or 'none'}; run prepare_data with the same PROPERTIES)")
    return {n: recorded[n] for n in names}


if __name__ == "__main__":
    run_script(main)
