"""Compare the base and the fine-tuned model on the same validation set, paired and seeded.

A diffusion loss is random (a timestep and noise per structure). Each model sees exactly
the same structures, timesteps and noise: before every batch of every draw the random
generator is reset to the same seed, and both models consume it identically. Losses are
kept per structure (MatterGen's batch loss is their mean); a structure's noise draws are
averaged first and the 95 % interval on the delta (fine-tuned minus base) is a t-interval
over the structures' paired differences. How much the delta would move with other noise
draws is reported apart (interval.noise_draw_se). With one validation structure there is no
interval (null, with the reason in interval.note).

A property-conditioned fine-tuned model is scored twice, on the same noise: with its
conditional embeddings fed the validation structures' property values ("finetuned"; a
structure missing a value gets the unconditional embedding, as in MatterGen's training) and
with its unconditional ones ("unconditional"); "conditioning" compares the two.
"""

from __future__ import annotations

from pathlib import Path

import click

from crygen.cli import pick_device, say, stage
from crygen.fileio import CrygenError, write_json


def paired_losses(module, datamodule, draws: int, seed: int) -> dict:
    """Each loss per (draw, structure): ``{key: array (draws, n_val)}``, structures in the
    validation set's order."""
    import numpy as np
    import torch

    from crygen.validation import structure_losses

    device = next(module.parameters()).device
    rows: list[dict] = []
    with torch.no_grad():
        for draw in range(draws):
            parts: dict[str, list] = {}
            for b, batch in enumerate(datamodule.val_dataloader()):
                torch.manual_seed(seed * 1_000_003 + draw * 10_007 + b)
                for k, v in structure_losses(module.diffusion_module, batch.to(device)).items():
                    parts.setdefault(k, []).append(v.cpu().double().numpy())
            rows.append({k: np.concatenate(v) for k, v in parts.items()})
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def missing_values(data: Path, properties: list[str]) -> dict[str, int]:
    """How many validation structures lack each property (they are scored unconditionally)."""
    from crygen import properties as props

    return {p: sum(props.is_missing(v) for v in props.read_split_values(data, "val", p)) for p in properties}


@click.command(help=__doc__)
@click.option("--base-model", required=True, type=click.Path(path_type=Path))
@click.option("--finetuned-model", required=True, type=click.Path(path_type=Path))
@click.option("--data", required=True, type=click.Path(path_type=Path), help="Dataset folder (its val/ split).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="metrics.json to write.")
@click.option("--draws", default=4, show_default=True, type=click.IntRange(1), help="Noise draws per structure.")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(1))
@click.option("--seed", default=42, show_default=True, type=int)
@click.option("--device", default="auto", show_default=True)
@stage("validate")
def main(base_model, finetuned_model, data, out, draws, batch_size, seed, device):
    from hydra.utils import instantiate

    from mattergen.property_embeddings import SetUnconditionalEmbeddingType

    from crygen import mattergen_compat as mc
    from crygen.validation import compare, observed_embedding_type

    if not (Path(data) / "val" / "pos.npy").is_file():
        raise CrygenError(data, "not a prepared dataset (no val/pos.npy)")
    device = pick_device(device)
    base_model, finetuned_model = mc.check_model_dir(base_model), mc.check_model_dir(finetuned_model)
    # the data's values feed the properties it was fine-tuned on; chemical_system is computed
    # from each structure (MatterGen's transform), so a model conditioned on it always gets it;
    # any other property a conditioned base brought along is embedded unconditionally
    info = mc.read_model_info(finetuned_model)
    properties = sorted(info.get("settings", {}).get("properties", []))
    model_properties = mc.model_property_definitions(finetuned_model)
    base_conditioned = bool(mc.model_property_definitions(base_model))
    absent = [p for p in properties if not (Path(data) / "val" / f"{p}.json").is_file()]
    if absent:
        raise CrygenError(data, f"no values for {absent[0]!r}, which the fine-tuned model was trained on "
                                "(prepare the data with the same PROPERTIES)")
    mc.register_properties(model_properties)
    datamodule = instantiate(mc.data_module_config(data, batch_size=batch_size, properties=properties))
    runs = [("baseline", base_model, False), ("finetuned", finetuned_model, False)]
    if model_properties:
        # a conditioned base is scored with its conditions as well
        runs = [("baseline", base_model, base_conditioned), ("finetuned", finetuned_model, True),
                ("unconditional", finetuned_model, False)]
    results = {}
    for name, model_dir, conditional in runs:
        module = mc.load_lightning_module(model_dir, device)
        if model_properties:
            # fixed embedding choices instead of MatterGen's random dropout, which would also
            # draw from the generator and unpair the noise; a missing value takes the
            # unconditional branch, as MatterGen's training gives it (never a label or a NaN)
            iid = bool(getattr(module.diffusion_module.pre_corruption_fn, "dropout_fields_iid", False))
            module.diffusion_module.pre_corruption_fn = (observed_embedding_type(iid) if conditional
                                                         else SetUnconditionalEmbeddingType())
        results[name] = paired_losses(module, datamodule, draws, seed)
        say(f"validate: {name} loss {results[name]['loss'].mean():.4f}")
    metrics = compare(results["baseline"], results["finetuned"])
    if model_properties:
        metrics["properties"] = sorted(model_properties)
        metrics["baseline_embedding"] = "conditional" if base_conditioned else "unconditional"
        metrics["val_missing_values"] = missing_values(Path(data), properties)
        metrics["unconditional"] = compare(results["baseline"], results["unconditional"])["finetuned"]
        # conditional minus unconditional loss of the fine-tuned model, paired
        metrics["conditioning"] = compare(results["unconditional"], results["finetuned"])
    metrics.update({
        "n_val": len(datamodule.val_dataset),
        "draws": draws,
        "seed": seed,
        "pairing": "same structures, timesteps and noise for both models",
    })
    write_json(out, metrics)
    d, ci = metrics["delta"]["loss"], metrics["delta_ci95"]["loss"]
    spread = f"95% CI {ci[0]:+.4f} .. {ci[1]:+.4f}" if ci else "no interval: one validation structure"
    say(f"validate: delta loss {d:+.4f} ({spread}, over {metrics['n_val']} structures) -> {out}")


if __name__ == "__main__":
    main()
