"""Train crygen's embedded base model: a small MatterGen (GemNet-T denoiser, MatterGen's
corruption and loss) from scratch on a prepared dataset, written as a MatterGen model dir.

The recipe (data hash, sizes, steps, seed, wall time) is recorded in the model dir's
crygen_model.json. Interrupted training resumes from its last checkpoint.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from crygen.cli import pick_device, run_script, say, seed_everything, setting_option, stage
from crygen.fileio import CrygenError


@click.command(help=__doc__)
@click.option("--data", required=True, type=click.Path(path_type=Path), help="Dataset folder from prepare_data.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Model dir to write.")
@click.option("--work-dir", required=True, type=click.Path(path_type=Path), help="Scratch folder for checkpoints.")
@setting_option("BASE_STEPS", "--max-steps", show_default=True, type=int)
@click.option("--batch-size", default=32, show_default=True, type=int)
@click.option("--lr", default=5e-4, show_default=True, type=float)
@click.option("--hidden-dim", default=64, show_default=True, type=int)
@click.option("--num-blocks", default=2, show_default=True, type=int)
@click.option("--max-neighbors", default=12, show_default=True, type=int)
@click.option("--cutoff", default=7.0, show_default=True, type=float)
@click.option("--diffusion-steps", default=250, show_default=True, type=int)
@click.option("--atom-type-loss-weight", default=20.0, show_default=True, type=float,
              help="Weight of MatterGen's atom-type (D3PM) loss. At weight 1 a small model learns only the "
                   "element frequencies and samples 4-18 elements per cell.")
@click.option("--init-from", type=click.Path(path_type=Path),
              help="Start from this model dir's weights (same architecture); its recipe is kept as the parent.")
@setting_option("SEED", "--seed", show_default=True, type=int)
@setting_option("DEVICE", "--device", show_default=True)
@stage("train_base")
def main(data, out, work_dir, max_steps, batch_size, lr, hidden_dim, num_blocks, max_neighbors, cutoff,
         diffusion_steps, atom_type_loss_weight, init_from, seed, device):
    import numpy as np
    from hydra.utils import instantiate

    from crygen import mattergen as mc
    from crygen.dataset import PreparedDataset
    from crygen.training import fit

    dataset = PreparedDataset.open(data).record
    device = pick_device(device)
    seed_everything(seed)
    mc.ensure_mattergen_files()
    denoiser = mc.denoiser_config(
        hidden_dim=hidden_dim, num_blocks=num_blocks, cutoff=cutoff, max_neighbors=max_neighbors,
        emb_size_trip=hidden_dim // 2, emb_size_bil_trip=hidden_dim // 2, num_radial=32,
    )
    lm = mc.lightning_module_config(mc.diffusion_module_config(denoiser, diffusion_steps, atom_type_loss_weight), lr=lr)
    config = mc.model_config(lm, mc.data_module_config(data, batch_size=batch_size))
    module = instantiate(config["lightning_module"])
    parent = None
    if init_from is not None:
        init = mc.ModelDir(init_from, verify=True)
        state = init.checkpoint
        try:
            module.load_state_dict(state["state_dict"], strict=True)
        except RuntimeError as e:
            raise CrygenError(init_from, f"weights do not fit this architecture ({str(e).splitlines()[0]})") from e
        parent = init.info.get("recipe")
    # max_steps is left out: a finished run asked for more steps continues from its checkpoint
    settings = {"data_sha256": dataset["input_sha256"], "config": config, "seed": seed, "parent": parent}
    start = time.time()
    last, _ = fit(module, config, work_dir, settings, max_steps=max_steps,
               accelerator="gpu" if device.startswith("cuda") else "cpu", checkpoint_every=200, name="train_base")
    n_params = sum(p.numel() for p in module.parameters())
    info = {
        "kind": "crygen embedded base model",
        "recipe": {
            "dataset": dataset,
            "max_steps": max_steps,
            "batch_size": batch_size,
            "lr": lr,
            "atom_type_loss_weight": atom_type_loss_weight,
            "seed": seed,
            "device": device,
            "train_wall_s_last_session": round(time.time() - start, 1),
            "parameters": n_params,
            "initialised_from": parent,
        },
        "num_atoms_distribution": mc.num_atoms_distribution(np.load(Path(data) / "train" / "num_atoms.npy")),
    }
    mc.write_model_dir(out, config, last, info)
    say(f"train_base: {n_params} parameters, {max_steps} steps -> {out}")


if __name__ == "__main__":
    run_script(main)
