"""Sampling with MatterGen's own predictor-corrector, batch by batch, accounting for every sample.

MatterGen's ``CrystalGenerator`` samples every batch in one go and loses all of them when
one sample diverges (cells blow up, GemNet finds no neighbours and raises). Here NUM_GEN
samples are drawn in a fixed plan of batches, each with a seed from SEED and its number
alone. A sample whose cell is not finite, collapsed or blown up cannot be written as a
crystal: it is counted (``failed_sanity_check``), never replaced by another draw. A batch
whose sampler raises loses its samples (counted, with the error) and is drawn again with
the seed of its next retry, a bounded number of times. So the metrics describe what the
model makes, and ``GenerationResult.samples()`` says what became of every drawn sample.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crygen import patches
from crygen.cli import say
from crygen.fileio import one_line
from crygen.generation_blocks import add_block, block_record, open_blocks
from crygen.mattergen import speedups
from crygen.mattergen.configs import sampling_overrides
from crygen.mattergen.files import SAMPLING_CONFIG_DIR
from crygen.mattergen.model_dir import ModelDir
from crygen.mattergen.num_atoms import register_num_atoms_distribution
from crygen.parts import Claims, share_of
from crygen.trajectories import from_sampler_frames

TRAJECTORY_FRAMES = 50  # frames kept per trajectory (of 2 x N sampler steps)
CPU_MAX_BATCH = 256  # beyond this a CPU gains no throughput
# On a CPU a batch whose budgeted memory (structure_memory_mb each) passes this samples each
# crystal more slowly, its working set far out of cache: at MatterGen's real size batches of 8
# and 16 took 0.30 and 0.31 s per crystal and step, 64 took 0.49-0.51 (budgets 0.5, 1.0, 3.9 GB;
# tests/bench_models.py, alternating runs); the embedded model gained up to 128 (0.5 GB).
CPU_BATCH_MEMORY_MB = 1024


@dataclass
class GenerationResult:
    structures: list = field(default_factory=list)
    trajectories: list = field(default_factory=list)  # per structure: a crygen.trajectories.Trajectory
    batch_size: int = 0
    batches_run: int = 0  # draws of a batch, retries included
    drawn: int = 0  # samples the sampler started on, counted as each batch is drawn
    # {"batch", "retry", "size", "error"} per draw whose sampler raised (its samples are lost)
    failed_batches: list = field(default_factory=list)
    failed_sanity_check: int = 0  # samples drawn, not written: see SANITY_CHECK
    sampling_overrides: list = field(default_factory=list)  # the model dir's own (crygen_model.json)
    seconds: float = 0.0  # sampling time, summed over the blocks
    blocks: list = field(default_factory=list)  # per block: its number, size, time, where it ran

    @property
    def lost_in_failed_batches(self) -> int:
        return sum(f["size"] for f in self.failed_batches)

    def samples(self) -> dict[str, Any]:
        """What became of every drawn sample (generation.json's ``samples``)."""
        return {"drawn": self.drawn, "written": len(self.structures), "failed_sanity_check": self.failed_sanity_check,
                "lost_in_failed_batches": self.lost_in_failed_batches, "failed_batches": list(self.failed_batches)}


# Peak memory per structure in a sampling batch, measured (tests/bench_models.py, peak RSS
# against batch size on CPU, structures drawn from MatterGen's atom-count distribution): 2.0 MB
# for the embedded model (64 wide, 12 neighbours), 24-35 MB for MatterGen's real size (512 wide,
# 50 neighbours: batches of 1, 8, 24 peaked at 0.99, 1.15, 1.71 GB). Both lie on
# MB = 1.1 + 0.87 * (edge width / 64) * (neighbours / 12): edges and their embeddings dominate.
# Twice that is budgeted, for cells of the largest atom counts.
_MB_FIXED, _MB_PER_EDGE_UNIT, _MEMORY_MARGIN = 1.1, 0.87, 2.0


def structure_memory_mb(model_config: dict[str, Any]) -> float:
    """The memory budgeted per structure in a sampling batch of this model (CPU or GPU)."""
    gem = model_config["lightning_module"]["diffusion_module"]["model"]["gemnet"]
    edge_units = gem.get("emb_size_edge", 512) / 64.0 * gem.get("max_neighbors", 50) / 12.0
    return _MEMORY_MARGIN * (_MB_FIXED + _MB_PER_EDGE_UNIT * edge_units)


def auto_batch_size(num_gen: int, model_config: dict[str, Any], device: str) -> int:
    """Largest batch the memory at hand allows, capped by what is asked for.

    The budget per structure is :func:`structure_memory_mb` (measured on both model sizes);
    on a GPU the batch may take 60 % of the free device memory, on a CPU 40 % of the
    available RAM and at most CPU_BATCH_MEMORY_MB (MatterGen's real size: batches of 16,
    1.6x the crystals per minute of 64). On CPU a bigger batch saves only the fixed cost of
    each sampler step (Python and op dispatch, about 7 ms of GemNet's 11 ms per step at batch
    4 for the embedded model); per-crystal compute decides the rest, and crygen's radius graph, bilinear layer
    and memory reuse (crygen.mattergen.speedups, keep_freed_memory) cut it by about 30 %. How
    many more crystals per minute a batch of 64 samples than one of 4 is measured by
    benchmarks/bench_pipeline.py (figures in the README's speed section). At MatterGen's real
    size a CPU is compute-bound from the first structure (README, "MatterGen's own models");
    GPUs gain more.
    """
    per_structure_mb = structure_memory_mb(model_config)
    if device.startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(device))
        cap = int(0.6 * free / 2**20 / per_structure_mb)
    else:
        import psutil

        cap = min(CPU_MAX_BATCH, int(CPU_BATCH_MEMORY_MB / per_structure_mb),
                  int(0.4 * psutil.virtual_memory().available / 2**20 / per_structure_mb))
    cap = max(1, cap)
    # Balance: the fewest batches that fit, then spread NUM_GEN evenly over them.
    n_batches = math.ceil(num_gen / cap)
    return math.ceil(num_gen / n_batches)


def _sampler(module, config: dict[str, Any], guidance: float, extra_overrides: list[str] = ()):
    """MatterGen's predictor-corrector from crygen's sampling config, with the model's step
    count and ``extra_overrides`` (a model dir's own, ``sampling_overrides`` in crygen_model.json)."""
    import hydra
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate

    GlobalHydra.instance().clear()
    overrides = sampling_overrides(config) + list(extra_overrides) + [f"sampler_partial.guidance_scale={guidance}"]
    with hydra.initialize_config_dir(str(SAMPLING_CONFIG_DIR), version_base="1.1"):
        cfg = hydra.compose(config_name="default", overrides=overrides)
    return instantiate(cfg.sampler_partial)(pl_module=module)


class ModelFailure(RuntimeError):
    """The model itself cannot be sampled (not one diverging sample): drawing again is futile."""


# A trained model's cell score on samples of the prior is of order 1 (the embedded model's: 2-5).
# Far below it, the sampler's Langevin corrector, whose step grows as 1/|score|^2 up to 1e6,
# moves every cell by ~1000 A in its first step (random weights of MatterGen's size: 1e-3).
VANISHING_CELL_SCORE = 1e-2


class ScoreProbe:
    """Counts a sampler's model calls and keeps the cell score of each batch's first call, so a
    failure can be placed: within the first denoising step nothing but the model has acted
    on samples of the prior. Wraps this sampler object's score function only."""

    def __init__(self, sampler) -> None:
        self.calls = 0
        self.batch_start = 0
        self.first_cell_score: float | None = None
        self.first_step_calls = 1 + sampler._n_steps_corrector * bool(sampler._correctors)
        patches.wrap("sampling.score_probe", sampler, self._probed)

    def _probed(self, score_fn):
        def probed(x, t):
            score = score_fn(x, t)
            if self.calls == self.batch_start:
                self.first_cell_score = float(score["cell"].flatten(1).norm(dim=1).median())
            self.calls += 1
            return score

        return probed

    def new_batch(self) -> None:
        self.batch_start, self.first_cell_score = self.calls, None

    def failure(self, error: Exception) -> ModelFailure | None:
        """The model's failure, when ``error`` came within a batch's first denoising step."""
        if self.calls - self.batch_start > self.first_step_calls:
            return None
        why = ""
        if self.first_cell_score is not None and self.first_cell_score < VANISHING_CELL_SCORE:
            why = (f"; its cell score on the prior is {self.first_cell_score:.1e} (a trained model's is of order 1), "
                   "so the corrector's first step blows every cell up: untrained or random weights?")
        return ModelFailure(f"the model fails in the first denoising step, on samples of the prior, so no other "
                            f"seed or batch size can help ({one_line(error)}){why}")


def keep_freed_memory() -> None:
    """Have glibc keep freed memory for reuse instead of handing it back to the OS.

    By default glibc serves blocks over 128 kB (a bar that only creeps up) with fresh mmaps
    and unmaps them on free. Every sampler step allocates the same large tensors again, so
    their pages were faulted in anew each time: 5.6 million page faults and 12 s of system
    time in a 64-crystal run of 64 s, gone with this (heap blocks up to 32 MB, no trimming).
    The peak memory stays what the batch needs; it is only returned when the process ends.
    Elsewhere than glibc there is nothing to tune."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's mallopt parameters
    libc.mallopt(m_mmap_threshold, 32 << 20)  # glibc's ceiling for it on 64-bit
    libc.mallopt(m_trim_threshold, 2**31 - 1)


SANITY_CHECK = "a finite cell of more than 0.1 A^3 per atom, every cell length below 1000 A"


def _is_sane(structure) -> bool:
    """Whether a sample can be written as a crystal (SANITY_CHECK)."""
    lat = structure.lattice
    return (
        all(math.isfinite(x) for x in lat.abc + lat.angles)
        and lat.volume > 0.1 * len(structure)
        and max(lat.abc) < 1000.0
    )


MAX_RETRIES = 2  # a batch whose sampler raises is drawn again at most this often, each time with its own seed


class GenerationFailure(RuntimeError):
    """Sampling gave up: a batch failed on every draw, or no sample passed the sanity check."""


def batch_sizes(num_gen: int, batch_size: int) -> list[int]:
    """The fixed plan: NUM_GEN samples in batches of ``batch_size``, the last one smaller."""
    return [min(batch_size, num_gen - start) for start in range(0, num_gen, batch_size)]


def batch_seed(seed: int, batch: int, retry: int) -> int:
    """The seed of batch ``batch`` (numbered from 1) on its ``retry``-th redraw: a pure function
    of the three, never of what happened before, so any batch can be drawn again on its own
    (and generation split into blocks) with the same result. A 32-bit value, as numpy needs."""
    import numpy as np

    return int(np.random.SeedSequence([seed, batch, retry]).generate_state(1)[0])


@dataclass
class Sampling:
    """What a generation run samples with, prepared once (:func:`prepare_sampling`): the model's
    config and module, MatterGen's sampler (probed), the name of the atom-count distribution,
    the model dir's own sampling overrides."""

    config: dict[str, Any]
    module: Any
    sampler: Any
    probe: ScoreProbe
    num_atoms_distribution: str
    overrides: list


def prepare_sampling(model: ModelDir, device: str, guidance: float) -> Sampling:
    """Load the model (its checkpoint read once, by ``model``), register its atom-count
    distribution and build the sampler."""
    config = model.config
    module = model.lightning_module(device)
    info = model.info
    dist_name = "ALEX_MP_20"
    if "num_atoms_distribution" in info:
        dist_name = register_num_atoms_distribution(f"crygen:{model.path}", info["num_atoms_distribution"])
    keep_freed_memory()
    overrides = list(info.get("sampling_overrides", []))
    sampler = _sampler(module, config, guidance, overrides)
    return Sampling(config, module, sampler, ScoreProbe(sampler), dist_name, overrides)


def generate(
    model_dir: ModelDir | Path,
    num_gen: int,
    seed: int,
    device: str = "cpu",
    batch_size: int | None = None,
    guidance: float = 0.0,
    properties: dict[str, Any] | None = None,
    record_trajectories: bool = True,
    max_retries: int = MAX_RETRIES,
    log=say,
    blocks_dir: Path | None = None,
    share: tuple[int, int] = (1, 1),
    threads: int = 0,
) -> GenerationResult:
    """Draw ``num_gen`` samples in the batches of :func:`batch_sizes`, accounting for each.

    A sample that fails :func:`_is_sane` is counted, not written; a batch whose sampler raises
    loses its samples (counted, with the error) and is drawn again, at most ``max_retries``
    times, with seeds from :func:`batch_seed`; a batch that fails every time ends generation
    (:class:`GenerationFailure`), as does a failure within the first denoising step
    (:class:`ModelFailure`: the model itself) and a run in which no sample passed the check.
    ``model_dir``: a :class:`ModelDir` (its checkpoint, if read already, is not read again) or a path.

    Each batch is a block (:mod:`crygen.generation_blocks`): with ``blocks_dir`` every finished
    block is written there and a block found there is read instead of drawn; ``share`` ``(k, n)``
    draws only the blocks of that share (and returns them alone). ``threads`` (torch's, recorded
    with each block) names the blocks' folder: the sampler draws other crystals on other counts."""
    model = ModelDir.of(model_dir)
    result = GenerationResult(batch_size=batch_size or auto_batch_size(num_gen, model.config, device),
                              sampling_overrides=list(model.info.get("sampling_overrides", [])))
    plan = batch_sizes(num_gen, result.batch_size)
    store = None if blocks_dir is None else open_blocks(
        blocks_dir, model.checkpoint_path, result.sampling_overrides, seed, result.batch_size, guidance, properties,
        record_trajectories, device, threads)
    claims = Claims.of_this_process() if share != (1, 1) else None
    mine = [b + 1 for b in share_of(range(len(plan)), share, claims)]
    todo = [b for b in mine if store is None or not store.has(b, plan[b - 1])]
    run = prepare_sampling(model.verify(), device, guidance) if todo else None
    if len(todo) < len(mine):
        log(f"generate: {len(mine) - len(todo)} of {len(mine)} blocks already drawn ({store.parts.folder})")
    # less time per step, while sampling only; crygen.mattergen.speedups says how close to MatterGen's
    with patches.applied(*speedups.SAMPLING) if todo else contextlib.nullcontext():
        for b in mine:
            if b not in todo:
                if claims is None:
                    add_block(result, store.read(b, plan[b - 1]))
            elif claims is None or claims.take(store.name(b, plan[b - 1])):
                _draw_block(run, result, store, b, plan, seed, properties, record_trajectories, max_retries, log,
                            device, threads)
    if not result.structures and share == (1, 1):
        raise GenerationFailure(f"none of the {result.drawn} samples drawn passed the sanity check ({SANITY_CHECK})")
    return result


def _draw_block(run: Sampling, result: GenerationResult, store, batch: int, plan: list[int], seed: int,
                properties: dict[str, Any] | None, record_trajectories: bool, max_retries: int, log, device: str,
                threads: int) -> None:
    """Block ``batch`` of ``plan`` drawn, written to ``store`` when there is one, and added to
    ``result`` through its record, as a block read from disk is: the same structures either way."""
    n = plan[batch - 1]
    part = GenerationResult(batch_size=n)
    start = time.time()
    _draw_with_retries(run, part, batch, len(plan), seed, properties, record_trajectories, max_retries, log)
    part.seconds = time.time() - start
    seeds = [batch_seed(seed, batch, retry) for retry in range(part.batches_run)]  # one per draw
    record = block_record(part, batch, n, seeds, device, threads)
    if store is not None:
        store.write(batch, n, record)
    add_block(result, record)
    log(f"generate: block {batch}/{len(plan)}: {len(result.structures)} structures written of "
        f"{result.drawn} drawn, {result.seconds:.0f} s")


def _draw_with_retries(run: Sampling, result: GenerationResult, batch: int, batches: int, seed: int,
                       properties: dict[str, Any] | None, record_trajectories: bool, max_retries: int, log) -> None:
    """Batch ``batch`` (of ``batches``) drawn into ``result``, again on failure up to ``max_retries``
    times, each time with its own seed; its samples counted as lost on each failure."""
    n = result.batch_size
    for retry in range(max_retries + 1):
        error = _draw_batch(run, result, n, batch_seed(seed, batch, retry), properties, record_trajectories)
        if error is None:
            return
        result.failed_batches.append({"batch": batch, "retry": retry, "size": n, "error": one_line(error)})
        if retry == max_retries:
            raise GenerationFailure(
                f"batch {batch}/{batches} failed on all {max_retries + 1} draws, each with its own seed "
                f"(last: {one_line(error)}): the model's samples diverge too often") from error
        log(f"generate: batch {batch}/{batches} failed ({one_line(error)}); its {n} samples are "
            f"counted as lost, drawing it again (retry {retry + 1} of {max_retries})")


def _draw_batch(run: Sampling, result: GenerationResult, n: int, seed: int, properties: dict[str, Any] | None,
                record_trajectories: bool) -> Exception | None:
    """One draw of a batch of ``n`` samples with ``seed``, counted in ``result``: its sane
    samples kept, the others counted. The sampler's error if it raised (then the batch's
    samples are lost), unless the model itself failed (:class:`ModelFailure`, raised)."""
    conditioning, mask = _batch_conditions(run, n, seed, properties)
    run.probe.new_batch()
    result.batches_run += 1
    result.drawn += n
    try:
        structures, records = _run_sampler(run, conditioning, mask, record_trajectories)
    except Exception as e:  # a diverging sample surfaces as many error types
        model_failure = run.probe.failure(e)
        if model_failure is not None:
            raise model_failure from e
        return e
    _keep_sane(result, structures, records)
    return None


def _batch_conditions(run: Sampling, n: int, seed: int, properties: dict[str, Any] | None):
    """A batch's atom counts (and conditions), drawn with ``seed``."""
    import numpy as np
    import torch
    from mattergen.common.data.condition_factory import get_number_of_atoms_condition_loader

    # MatterGen draws each sample's atom count from numpy's global generator
    torch.manual_seed(seed)
    np.random.seed(seed)
    loader = get_number_of_atoms_condition_loader(
        num_atoms_distribution=run.num_atoms_distribution, num_samples=n, batch_size=n, shuffle=False,
        properties=properties,
    )
    (conditioning, mask), = list(loader)
    return conditioning, mask


def _run_sampler(run: Sampling, conditioning, mask, record_trajectories: bool):
    """The sampler on one batch: its structures and, if recorded, its trajectory's records."""
    from mattergen.common.utils.data_utils import lattice_matrix_to_params_torch
    from mattergen.generator import structure_from_model_output

    if record_trajectories:
        _, mean, records = run.sampler.sample_with_record(conditioning, mask)
    else:
        _, mean = run.sampler.sample(conditioning, mask)
        records = None
    mean = mean.to("cpu")
    lengths, angles = lattice_matrix_to_params_torch(mean.cell)
    structures = structure_from_model_output(
        mean.pos, mean.atomic_numbers, lengths, angles, mean.num_atoms
    )
    return structures, records


def _keep_sane(result: GenerationResult, structures: list, records) -> None:
    """The samples that pass :func:`_is_sane` (and their trajectories) into ``result``; the others counted."""
    keep = [i for i, s in enumerate(structures) if _is_sane(s)]
    result.failed_sanity_check += len(structures) - len(keep)
    result.structures.extend(structures[i] for i in keep)
    if records is not None:
        step = max(1, len(records) // TRAJECTORY_FRAMES)
        frames = records[::step] + ([records[-1]] if (len(records) - 1) % step else [])
        result.trajectories.extend(from_sampler_frames(frames, keep))
