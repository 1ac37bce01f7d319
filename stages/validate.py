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

from crygen.cli import pick_device, run_script, say, setting_option, stage
from crygen.fileio import write_json


@click.command(help=__doc__)
@click.option("--base-model", required=True, type=click.Path(path_type=Path))
@click.option("--finetuned-model", required=True, type=click.Path(path_type=Path))
@click.option("--data", required=True, type=click.Path(path_type=Path), help="Dataset folder (its val/ split).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="metrics.json to write.")
@setting_option("DRAWS", "--draws", show_default=True, type=click.IntRange(1), help="Noise draws per structure.")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(1))
@setting_option("SEED", "--seed", show_default=True, type=int)
@setting_option("DEVICE", "--device", show_default=True)
@stage("validate")
def main(base_model, finetuned_model, data, out, draws, batch_size, seed, device):
    from crygen.dataset import PreparedDataset
    from crygen.validation import compare_models

    dataset = PreparedDataset.open(data, split="val")
    metrics = compare_models(base_model, finetuned_model, dataset, draws, batch_size, seed, pick_device(device))
    write_json(out, metrics)
    d, ci = metrics["delta"]["loss"], metrics["delta_ci95"]["loss"]
    spread = f"95% CI {ci[0]:+.4f} .. {ci[1]:+.4f}" if ci else "no interval: one validation structure"
    say(f"validate: delta loss {d:+.4f} ({spread}, over {metrics['n_val']} structures) -> {out}")


if __name__ == "__main__":
    run_script(main)
