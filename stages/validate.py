"""Compare the base and the fine-tuned model on the same validation set, paired and seeded.

A diffusion loss is random (a timestep and noise per structure). Each model sees exactly
the same structures, timesteps and noise: before every batch of every draw the random
generator is reset to the same seed, and both models consume it identically. The deltas
(fine-tuned minus base) are therefore paired; their 95 % confidence intervals come from the
spread of the paired differences over all (draw, batch) units.

A property-conditioned fine-tuned model is scored twice, on the same noise: with its
conditional embeddings fed the validation structures' property values ("finetuned") and
with its unconditional ones ("unconditional"); "conditioning" compares the two.
"""

from __future__ import annotations

from pathlib import Path

import click

from crygen.cli import pick_device, stage
from crygen.fileio import CrygenError, write_json


def paired_losses(module, datamodule, draws: int, seed: int) -> list[dict[str, float]]:
    """One dict of losses per (draw, batch), in a fixed order, with ``n`` = batch size."""
    import torch

    units = []
    device = next(module.parameters()).device
    with torch.no_grad():
        for draw in range(draws):
            for b, batch in enumerate(datamodule.val_dataloader()):
                torch.manual_seed(seed * 1_000_003 + draw * 10_007 + b)
                loss, metrics = module.diffusion_module.calc_loss(batch.to(device))
                unit = {"loss": float(loss), "n": int(batch.get_batch_size())}
                unit.update({k: float(v) for k, v in metrics.items() if torch.as_tensor(v).numel() == 1})
                units.append(unit)
    return units


def compare(base_units: list[dict], ft_units: list[dict]) -> dict:
    import numpy as np
    from scipy import stats

    keys = [k for k in base_units[0] if k != "n" and k in ft_units[0]]
    w = np.array([u["n"] for u in base_units], dtype=float)

    def mean(units, k):
        return float(np.average([u[k] for u in units], weights=w))

    out = {"baseline": {}, "finetuned": {}, "delta": {}, "delta_ci95": {}}
    for k in keys:
        out["baseline"][k] = mean(base_units, k)
        out["finetuned"][k] = mean(ft_units, k)
        diffs = np.array([f[k] - b[k] for b, f in zip(base_units, ft_units)])
        d = float(np.average(diffs, weights=w))
        out["delta"][k] = d
        if len(diffs) > 1:
            half = float(stats.t.ppf(0.975, len(diffs) - 1) * diffs.std(ddof=1) / np.sqrt(len(diffs)))
        else:
            half = float("nan")
        out["delta_ci95"][k] = [d - half, d + half]
    return out


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

    from mattergen.property_embeddings import SetConditionalEmbeddingType, SetUnconditionalEmbeddingType

    from crygen import mattergen_compat as mc

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
    runs = [("baseline", base_model, None), ("finetuned", finetuned_model, None)]
    if model_properties:
        # fixed embedding choices instead of MatterGen's random dropout, which would also
        # draw from the generator and unpair the noise; a conditioned base is scored with
        # its conditions as well
        conditional, unconditional = SetConditionalEmbeddingType(), SetUnconditionalEmbeddingType()
        runs = [("baseline", base_model, conditional if base_conditioned else unconditional),
                ("finetuned", finetuned_model, conditional),
                ("unconditional", finetuned_model, unconditional)]
    results = {}
    for name, model_dir, embedding_choice in runs:
        module = mc.load_lightning_module(model_dir, device)
        if embedding_choice is not None:
            module.diffusion_module.pre_corruption_fn = embedding_choice
        results[name] = paired_losses(module, datamodule, draws, seed)
        click.echo(f"validate: {name} loss {sum(u['loss'] * u['n'] for u in results[name]) / sum(u['n'] for u in results[name]):.4f}", err=True)
    metrics = compare(results["baseline"], results["finetuned"])
    if model_properties:
        metrics["properties"] = sorted(model_properties)
        metrics["baseline_embedding"] = "conditional" if base_conditioned else "unconditional"
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
    click.echo(f"validate: delta loss {d:+.4f} (95% CI {ci[0]:+.4f} .. {ci[1]:+.4f}) -> {out}")


if __name__ == "__main__":
    main()
