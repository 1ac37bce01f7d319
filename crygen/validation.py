"""Paired validation losses per structure, and the interval on their difference.

MatterGen's loss for a batch is the mean over its structures of a per-structure loss (the
weighted sum of the per-field losses of ``SummedFieldLoss``). :func:`structure_losses` keeps
those per-structure values, read from MatterGen's own computation (its ``apply`` of the field
losses), so nothing about the loss changes: their batch mean is MatterGen's batch loss.

The unit of the interval is the structure: each structure's noise draws are averaged first,
then a t-interval (n - 1 degrees of freedom) is taken over the structures' paired differences.
Noise draws of one structure are not independent units (every draw sees the same
structures), so the spread over draws only says how much the delta would move with other
noise draws; it is reported apart (``noise_draw_se``).

:func:`compare_models` is ``validate``'s work: both models' paired losses on the validation
split, compared.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from crygen.dataset import PreparedDataset
from crygen.fileio import CrygenError

T_INTERVAL = "t-interval over structures of the paired per-structure differences (noise draws averaged first)"
NO_INTERVAL_ONE_STRUCTURE = "one validation structure: no spread over structures, so no interval"
NO_NOISE_SE_ONE_DRAW = "one noise draw per structure: the noise-draw error cannot be estimated"


@contextlib.contextmanager
def _recorded_field_losses(record: list) -> Iterator[None]:
    """Record the per-structure, per-field losses that MatterGen's SummedFieldLoss averages."""
    import mattergen.diffusion.losses as losses

    original = losses.apply

    def recording_apply(*args, **kwargs):
        result = original(*args, **kwargs)
        record.append(result)
        return result

    losses.apply = recording_apply
    try:
        yield
    finally:
        losses.apply = original


def structure_losses(diffusion_module, batch) -> dict[str, Any]:
    """MatterGen's loss of ``batch`` per structure: ``{"loss": (B,), <field>: (B,), ...}``
    (field losses unweighted, as MatterGen logs them), from one call of its ``calc_loss``."""
    import torch

    record: list = []
    with _recorded_field_losses(record):
        loss, _ = diffusion_module.calc_loss(batch)
    if len(record) != 1:
        raise RuntimeError(f"expected one per-field loss computation in calc_loss, saw {len(record)}")
    per_field = record[0]
    weights = diffusion_module.loss_fn.loss_weights
    total = torch.stack([weights[k] * v for k, v in per_field.items()], dim=0).sum(0)
    # the same sum MatterGen takes; its mean must be MatterGen's loss or the split is wrong
    if not torch.allclose(total.mean(), loss, rtol=1e-5, atol=1e-6):
        raise RuntimeError(f"per-structure losses average {float(total.mean())}, MatterGen's loss is {float(loss)}")
    return {"loss": total.detach(), **{k: v.detach() for k, v in per_field.items()}}


def observed_embedding_type(dropout_fields_iid: bool = False):
    """Conditional embeddings where a structure has its property values, the unconditional
    ones where a value is missing: MatterGen's ``SetEmbeddingType`` with no random dropout
    (which would draw from the generator and unpair the noise). With
    ``dropout_fields_iid=False`` (crygen's and MatterGen's setting) a structure missing any
    property gets the unconditional embedding for all of them, as in training."""
    import torch
    from mattergen.property_embeddings import (data_is_not_nan, get_cond_field_names_in_batch,
                                               replace_use_unconditional_embedding)

    def choose(batch):
        fields = get_cond_field_names_in_batch(x=batch)
        if not fields:
            return batch
        device = batch["num_atoms"].device
        present = {f: data_is_not_nan(x=batch[f]).to(device).reshape(-1) for f in fields}
        all_present = torch.stack(list(present.values()), dim=1).all(dim=1)
        return replace_use_unconditional_embedding(batch=batch, use_unconditional_embedding={
            f: ~(present[f] if dropout_fields_iid else all_present).reshape(-1, 1) for f in fields})

    return choose


def paired_interval(base, tuned) -> dict[str, Any]:
    """``base``, ``tuned``: arrays of shape (draws, structures), the same noise in each cell.

    Returns the means, the delta (tuned - base, every structure weighted equally), its 95 %
    t-interval over structures (None with one structure) and the noise-draw standard error
    of the delta (None with one draw)."""
    import numpy as np
    from scipy import stats

    base, tuned = np.asarray(base, dtype=float), np.asarray(tuned, dtype=float)
    if base.shape != tuned.shape or base.ndim != 2:
        raise ValueError(f"paired losses must share one (draws, structures) shape, got {base.shape} and {tuned.shape}")
    draws, n = base.shape
    diffs = tuned - base
    per_structure = diffs.mean(axis=0)
    delta = float(per_structure.mean())
    ci = None
    if n > 1:
        half = float(stats.t.ppf(0.975, n - 1) * per_structure.std(ddof=1) / np.sqrt(n))
        ci = [delta - half, delta + half]
    noise_se = None
    if draws > 1:
        # within-structure variance of one draw's difference, pooled over structures
        noise_se = float(np.sqrt(diffs.var(axis=0, ddof=1).mean() / (draws * n)))
    return {"baseline": float(base.mean()), "finetuned": float(tuned.mean()), "delta": delta, "ci95": ci,
            "noise_draw_se": noise_se}


def compare(base: dict[str, Any], tuned: dict[str, Any]) -> dict[str, Any]:
    """metrics.json's comparison block: ``baseline``, ``finetuned``, ``delta``, ``delta_ci95``
    and ``interval`` (method, unit, n, noise_draw_se) for every loss both sides have."""
    keys = [k for k in base if k in tuned]
    out: dict[str, Any] = {"baseline": {}, "finetuned": {}, "delta": {}, "delta_ci95": {}}
    noise_se = {}
    for k in keys:
        r = paired_interval(base[k], tuned[k])
        out["baseline"][k], out["finetuned"][k], out["delta"][k] = r["baseline"], r["finetuned"], r["delta"]
        out["delta_ci95"][k] = r["ci95"]
        noise_se[k] = r["noise_draw_se"]
    draws, n = base[keys[0]].shape
    interval: dict[str, Any] = {"method": T_INTERVAL, "unit": "structure", "n": n, "df": n - 1 if n > 1 else None,
                                "draws_per_structure": draws, "noise_draw_se": noise_se}
    notes = [note for ok, note in ((n > 1, NO_INTERVAL_ONE_STRUCTURE), (draws > 1, NO_NOISE_SE_ONE_DRAW)) if not ok]
    if notes:
        interval["note"] = "; ".join(notes)
    out["interval"] = interval
    return out


# --------------------------------------------------------------------------- comparing two models


def paired_losses(module, datamodule, draws: int, seed: int) -> dict:
    """Each loss per (draw, structure): ``{key: array (draws, n_val)}``, structures in the
    validation set's order."""
    import numpy as np
    import torch

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


@dataclass
class _Models:
    """The two models compared, checked, and what they are conditioned on."""

    base: Path
    finetuned: Path
    properties: list[str]  # the fine-tuned model's training properties (fed the data's values)
    model_properties: dict[str, Any]  # its property definitions (empty: unconditioned)
    base_conditioned: bool


def _models(base_model: Path, finetuned_model: Path, data: PreparedDataset) -> _Models:
    from crygen import mattergen as mc

    base_model, finetuned_model = mc.check_model_dir(base_model), mc.check_model_dir(finetuned_model)
    # the data's values feed the properties it was fine-tuned on; chemical_system is computed
    # from each structure (MatterGen's transform), so a model conditioned on it always gets it;
    # any other property a conditioned base brought along is embedded unconditionally
    info = mc.read_model_info(finetuned_model)
    properties = sorted(info.get("settings", {}).get("properties", []))
    model_properties = mc.model_property_definitions(finetuned_model)
    base_conditioned = bool(mc.model_property_definitions(base_model))
    absent = [p for p in properties if not (data.split("val") / f"{p}.json").is_file()]
    if absent:
        raise CrygenError(data.path, f"no values for {absent[0]!r}, which the fine-tuned model was trained on "
                                     "(prepare the data with the same PROPERTIES)")
    return _Models(base_model, finetuned_model, properties, model_properties, base_conditioned)


def compare_models(base_model: Path, finetuned_model: Path, data: PreparedDataset, draws: int, batch_size: int,
                   seed: int, device: str) -> dict[str, Any]:
    """validate's metrics.json: the base and the fine-tuned model's losses on ``data``'s
    validation split, paired (same structures, timesteps and noise), compared by :func:`compare`;
    a property-conditioned fine-tuned model also scored unconditionally (``device``: resolved)."""
    from hydra.utils import instantiate
    from mattergen.property_embeddings import SetUnconditionalEmbeddingType

    from crygen import mattergen as mc
    from crygen.cli import say

    models = _models(base_model, finetuned_model, data)
    mc.register_properties(models.model_properties)
    datamodule = instantiate(mc.data_module_config(data.path, batch_size=batch_size, properties=models.properties))
    runs = [("baseline", models.base, False), ("finetuned", models.finetuned, False)]
    if models.model_properties:
        # a conditioned base is scored with its conditions as well
        runs = [("baseline", models.base, models.base_conditioned), ("finetuned", models.finetuned, True),
                ("unconditional", models.finetuned, False)]
    results = {}
    for name, model_dir, conditional in runs:
        module = mc.load_lightning_module(model_dir, device)
        if models.model_properties:
            # fixed embedding choices instead of MatterGen's random dropout, which would also
            # draw from the generator and unpair the noise; a missing value takes the
            # unconditional branch, as MatterGen's training gives it (never a label or a NaN)
            iid = bool(getattr(module.diffusion_module.pre_corruption_fn, "dropout_fields_iid", False))
            module.diffusion_module.pre_corruption_fn = (observed_embedding_type(iid) if conditional
                                                         else SetUnconditionalEmbeddingType())
        results[name] = paired_losses(module, datamodule, draws, seed)
        say(f"validate: {name} loss {results[name]['loss'].mean():.4f}")
    metrics = compare(results["baseline"], results["finetuned"])
    if models.model_properties:
        metrics["properties"] = sorted(models.model_properties)
        metrics["baseline_embedding"] = "conditional" if models.base_conditioned else "unconditional"
        metrics["val_missing_values"] = missing_values(data.path, models.properties)
        metrics["unconditional"] = compare(results["baseline"], results["unconditional"])["finetuned"]
        # conditional minus unconditional loss of the fine-tuned model, paired
        metrics["conditioning"] = compare(results["unconditional"], results["finetuned"])
    metrics.update({
        "n_val": len(datamodule.val_dataset),
        "draws": draws,
        "seed": seed,
        "pairing": "same structures, timesteps and noise for both models",
    })
    return metrics
