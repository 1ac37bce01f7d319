"""Generate crystals: NUM_GEN samples drawn from the fine-tuned model, or any model dir (--model).

In the pipeline (--base-model, --finetuned, --model-out) it writes model_for_generation/ (the
base model's config with the fine-tuned checkpoint, a MatterGen model dir that MatterGen's
own generator loads). With --model (`make sample`) it samples that model dir as it is: a
path or a published MatterGen model name. The batch size is chosen from NUM_GEN and the
memory at hand unless given.

NUM_GEN is the number of samples drawn, and fewer may be written: a sample whose cell is not
finite, collapsed or blown up fails the sanity check and is counted, not written, nor drawn
again. A batch whose sampler raises (a diverging sample takes its batch with it) is drawn
again, at most twice, each time with its own seed; its samples are counted as lost.
generation.json's "samples" says what became of every sample drawn.

--out is the results folder, replaced whole when all of generated_crystals.extxyz,
generated_crystals_cif.zip, generated_trajectories.zip and generation.json are written (an
earlier evaluation in it goes with it). On failure GENERATION_FAILED.txt there holds the reason,
an earlier complete result stays as it was, and the exit status is non-zero.

--condition 'name=value,...' conditions on properties the model was fine-tuned on, with
classifier-free guidance --guidance (0: the unconditional model, 1: the conditional one,
above 1: pushed further towards the condition).
"""

from __future__ import annotations

from pathlib import Path

import click

from crygen.cli import pick_device, run_script, say, setting_option, stage
from crygen.fileio import CrygenError, atomic_path, write_json


@click.command(help=__doc__)
@click.option("--model", default=None, help="Model dir or published model name to sample as it is.")
@click.option("--base-model", default=None, type=click.Path(path_type=Path), help="Model dir whose config is used.")
@click.option("--finetuned", default=None, type=click.Path(path_type=Path), help="Fine-tuned model dir (its checkpoint).")
@click.option("--model-out", default=None, type=click.Path(path_type=Path), help="model_for_generation dir to write.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Results folder.")
@click.option("--num-gen", required=True, type=int, help="Samples to draw (fewer may pass the sanity check).")
@setting_option("GEN_BATCH", "--batch-size", show_default=True, type=click.IntRange(0), help="0 = automatic.")
@setting_option("SEED", "--seed", show_default=True, type=int)
@click.option("--trajectories/--no-trajectories", default=True, show_default=True)
@setting_option("DEVICE", "--device", show_default=True)
@setting_option("CONDITION", "--condition", help="name=value,... of properties the model was fine-tuned on.")
@setting_option("GUIDANCE", "--guidance", show_default=True, type=float, help="Classifier-free guidance factor.")
@setting_option("SHARDS", "--shards", show_default=True, type=click.IntRange(1))
@setting_option("THREADS", "--threads", show_default=True, type=click.IntRange(0))
@click.option("--blocks", "blocks_dir", default=None, type=click.Path(path_type=Path),
              help="Folder of finished blocks, read instead of drawn again (default: blocks/ beside --out).")
@click.option("--share", default=None, hidden=True, help="k/n: draw this share's blocks only, write no results.")
@stage("generate")
def main(model, base_model, finetuned, model_out, out, num_gen, batch_size, seed, trajectories, device, condition,
         guidance, shards, threads, blocks_dir, share):
    from crygen.cli import threads_per_process, use_threads
    from crygen.generation import auto_batch_size, generate
    from crygen.mattergen.model_dir import ModelDir
    from crygen.mattergen.properties import model_property_definitions
    from crygen.properties import parse_condition

    if num_gen < 1:
        raise CrygenError(None, f"NUM_GEN={num_gen}: must be at least 1")
    if (model is None) == (finetuned is None) or (finetuned is not None and (base_model is None or model_out is None)):
        raise CrygenError(None, "give --model, or --base-model with --finetuned and --model-out")
    if model is not None:
        model_dir = ModelDir(model, verify=True)  # its checkpoint read here, once
        definitions = model_property_definitions(model_dir)
    else:
        base_model, finetuned = ModelDir(base_model), ModelDir(finetuned, verify=True)
        definitions = model_property_definitions(finetuned)
    source = (model_dir if model else finetuned).path
    target = parse_condition(condition, definitions, source) if condition.strip() else {}
    if target and guidance < 0:
        raise CrygenError(None, f"GUIDANCE={guidance:g}: must be at least 0")
    device = pick_device(device)
    out = Path(out)
    blocks_dir = Path(blocks_dir) if blocks_dir else out.parent / "blocks"
    threads = use_threads(threads_per_process(threads, shards))
    sampling = dict(device=device, record_trajectories=trajectories, properties=target or None,
                    guidance=guidance if target else 0.0, log=say, blocks_dir=blocks_dir, threads=threads)
    if share:
        return draw_share(model_dir, num_gen, seed, batch_size, share, sampling)
    check_results_folder(out)
    failed = out / "GENERATION_FAILED.txt"
    if model is None:
        # a property-conditioned model has its own (adapter) architecture, not the base's
        config = (finetuned if definitions else base_model).config
        model_dir = ModelDir.write(model_out, config, finetuned, finetuned.info or base_model.info)
    try:
        if shards > 1:  # the block size is fixed here, for every shard; automatic: a block for each at least
            batch_size = batch_size or min(auto_batch_size(num_gen, model_dir.config, device), -(-num_gen // shards))
            draw_in_shards(model_dir, num_gen, seed, batch_size, shards, condition, sampling)
        result = generate(model_dir, num_gen, seed, batch_size=batch_size or None, **sampling)
        # every output is written into a new folder that replaces the results folder in one step:
        # an interrupted or failed run leaves no target that looks finished, nor a mix of two runs
        with atomic_path(out) as new:
            new.mkdir()
            write_results(new, result, trajectories, {
                "seed": seed,
                "device": device,
                "model_dir": str(model_dir.path.resolve()),
                **({"condition": target, "guidance": guidance} if target else {}),
            })
    except Exception as e:
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(failed) as tmp:
            tmp.write_text(f"{type(e).__name__}: {e}\n")
        raise CrygenError(failed, f"generation failed: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    samples = result.samples()
    say(f"generate: {samples['written']} structures written of {samples['drawn']} samples drawn "
        f"({samples['failed_sanity_check']} failed the sanity check, {samples['lost_in_failed_batches']} lost in "
        f"failed batches) in {result.seconds:.0f} s (batch {result.batch_size}) -> {out}")


def draw_share(model_dir, num_gen: int, seed: int, batch_size: int, share: str, sampling: dict) -> None:
    """A shard's process: its share of the blocks drawn into the blocks folder, nothing else written."""
    from crygen.generation import generate
    from crygen.settings import Bad
    from crygen.settings import share as parse_share

    try:
        k, n = parse_share(share)
    except Bad as e:
        raise CrygenError(None, f"--share {share!r}: {e}") from None
    result = generate(model_dir, num_gen, seed, batch_size=batch_size or None, share=(k, n), **sampling)
    say(f"generate: share {k}/{n}: {len(result.blocks)} blocks, {len(result.structures)} structures "
        f"-> {sampling['blocks_dir']}")


def draw_in_shards(model_dir, num_gen: int, seed: int, batch_size: int, shards: int, condition: str,
                   sampling: dict) -> None:
    """SHARDS processes side by side, each drawing its share of the blocks (one GPU each where
    DEVICE=cuda sees several); the caller then reads every block back."""
    import os

    from crygen.cli import shard_device
    from crygen.shards import run_shards, stage_command

    def command(k: int) -> list[str]:
        args = ["--model", str(model_dir.path), "--out", "-", "--num-gen", str(num_gen), "--batch-size",
                str(batch_size), "--seed", str(seed), "--device", shard_device(sampling["device"], k),
                "--threads", str(sampling["threads"]), "--blocks", str(sampling["blocks_dir"]), "--share", f"{k}/{shards}",
                "--trajectories" if sampling["record_trajectories"] else "--no-trajectories"]
        if sampling["properties"]:
            args += ["--condition", condition, "--guidance", str(sampling["guidance"])]
        return stage_command(__file__, args)

    say(f"generate: drawing blocks of {batch_size} in {shards} processes of {sampling['threads']} thread(s) each")
    logs = Path(os.environ.get("CRYGEN_LOG_DIR") or sampling["blocks_dir"])
    run_shards(command, shards, logs, "generate", sampling["threads"])


def check_results_folder(out: Path) -> None:
    """The results folder is replaced whole: refuse one that holds files but no generation."""
    if out.is_dir() and any(out.iterdir()) and not any((out / name).is_file()
                                                       for name in ("generation.json", "GENERATION_FAILED.txt")):
        raise CrygenError(out, "holds files but no generation (generation.json): generate replaces its results "
                               "folder whole, so give a new or empty folder")


def write_results(folder: Path, result, trajectories: bool, settings: dict) -> None:
    from crygen.generation import SANITY_CHECK
    from crygen.structures import write_structures
    from crygen.trajectories import write_trajectories

    if trajectories:
        write_trajectories(result.trajectories, folder / "generated_trajectories.zip")
    write_structures(result.structures, folder / "generated_crystals.extxyz", folder / "generated_crystals_cif.zip")
    write_json(folder / "generation.json", {
        "num_generated": len(result.structures),
        # every sample drawn: drawn = written + failed_sanity_check + lost_in_failed_batches
        "samples": result.samples(),
        "sanity_check": SANITY_CHECK,
        "batch_size": result.batch_size,
        "batches_run": result.batches_run,
        "sampling_seconds": round(result.seconds, 2),
        "structures_per_minute": round(len(result.structures) / result.seconds * 60 if result.seconds else 0.0, 2),
        **settings,
        # each block: its number and size, the samples written, its sampling time, where it ran
        "blocks": {"size": result.batch_size, "count": len(result.blocks), "blocks": result.blocks},
        # a model dir's own sampling settings (crygen_model.json), which change what is drawn
        **({"sampling_overrides": result.sampling_overrides} if result.sampling_overrides else {}),
    })


if __name__ == "__main__":
    run_script(main)
