"""stages/generate.py and crygen.generation on a tiny real MatterGen model."""

from __future__ import annotations

import zipfile

import ase.io
import pytest

from crygen import generation
from tests.helpers import counting_torch_load, error_line, run_stage


def test_generate_writes_all_outputs(tmp_path, fast_base_model):
    """... and only them: an earlier run's failure note and evaluation, which describe other
    structures, go with the folder they were in."""
    out = tmp_path / "results"
    out.mkdir()
    (out / "GENERATION_FAILED.txt").write_text("an earlier failure\n")
    (out / "metrics_summary.json").write_text("{}\n")
    run_stage("generate", "--base-model", fast_base_model, "--finetuned", fast_base_model,
              "--model-out", tmp_path / "mfg", "--out", out, "--num-gen", 3, "--seed", 7)
    assert sorted(p.name for p in out.iterdir()) == ["generated_crystals.extxyz", "generated_crystals_cif.zip",
                                                     "generated_trajectories.zip", "generation.json"]
    frames = ase.io.read(out / "generated_crystals.extxyz", ":")
    assert len(frames) == 3
    with zipfile.ZipFile(out / "generated_crystals_cif.zip") as zf:
        assert sorted(zf.namelist()) == ["gen_0.cif", "gen_1.cif", "gen_2.cif"]
    with zipfile.ZipFile(out / "generated_trajectories.zip") as zf:
        assert len(zf.namelist()) == 3
    assert (tmp_path / "mfg" / "config.yaml").is_file()
    assert (tmp_path / "mfg" / "checkpoints" / "last.ckpt").is_file()
    # atom counts follow the model's recorded distribution (its training data's)
    from crygen import mattergen as mc

    allowed = {int(n) for n in mc.read_model_info(fast_base_model)["num_atoms_distribution"]}
    assert {len(f) for f in frames} <= allowed


def test_make_generate_reads_the_checkpoint_once(tmp_path, fast_base_model, monkeypatch):
    """The pipeline's generate (base config, fine-tuned weights, model_for_generation written,
    sampled) reads one checkpoint once: the fine-tuned one, checked, copied and sampled."""
    import importlib.util

    from tests.helpers import STAGES

    spec = importlib.util.spec_from_file_location("generate_stage", STAGES / "generate.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    loads = counting_torch_load(monkeypatch)
    monkeypatch.delenv("CRYGEN_LOG_DIR", raising=False)
    stage.main.main([str(a) for a in ("--base-model", fast_base_model, "--finetuned", fast_base_model, "--model-out",
                                      tmp_path / "mfg", "--out", tmp_path / "results", "--num-gen", 2,
                                      "--batch-size", 2, "--device", "cpu", "--no-trajectories")],
                    standalone_mode=False)
    assert (tmp_path / "results" / "generation.json").is_file()
    assert loads == [str(fast_base_model / "checkpoints" / "last.ckpt")]


def test_model_for_generation_loads_in_mattergens_generator(tmp_path, fast_base_model):
    """MatterGen's own CrystalGenerator samples from the dir crygen writes."""
    from mattergen.generator import CrystalGenerator

    from crygen import mattergen as mc

    generator = CrystalGenerator(
        checkpoint_info=mc.checkpoint_info(fast_base_model),
        batch_size=2, num_batches=1,
        sampling_config_path=mc.SAMPLING_CONFIG_DIR,
        sampling_config_overrides=mc.sampling_overrides(mc.load_model_config(fast_base_model)),
        record_trajectories=False,
    )
    structures = generator.generate(output_dir=str(tmp_path))
    assert len(structures) == 2
    assert (tmp_path / "generated_crystals.extxyz").is_file()


def test_same_seed_same_structures(fast_base_model):
    a = generation.generate(fast_base_model, 2, seed=5, record_trajectories=False)
    b = generation.generate(fast_base_model, 2, seed=5, record_trajectories=False)
    assert [s.composition for s in a.structures] == [s.composition for s in b.structures]
    assert a.structures[0].lattice.abc == pytest.approx(b.structures[0].lattice.abc)


def _sampler_failing_at_call(fail_at: int, message: str):
    """crygen's sampler whose model raises, once, at its ``fail_at``-th call (from 1)."""
    real = generation._sampler
    calls = {"n": 0}

    def failing_sampler(*args, **kwargs):
        sampler = real(*args, **kwargs)
        score_fn = sampler._score_fn

        def score(x, t):
            calls["n"] += 1
            if calls["n"] == fail_at:
                raise RuntimeError(message)
            return score_fn(x, t)

        sampler._score_fn = score
        return sampler

    return failing_sampler


def test_a_diverging_batch_is_drawn_again_and_counted(fast_base_model, monkeypatch):
    """The first batch raises mid-way, as GemNet does when a cell blows up: its samples are
    counted as lost, it is drawn again with its retry's seed, and the next batch is drawn
    exactly as in a run where nothing failed (seeds depend on SEED and the batch alone)."""
    clean = generation.generate(fast_base_model, 4, seed=1, batch_size=2, record_trajectories=False)
    message = "cannot reshape tensor of 0 elements (no neighbours)"
    monkeypatch.setattr(generation, "_sampler", _sampler_failing_at_call(7, message))
    result = generation.generate(fast_base_model, 4, seed=1, batch_size=2, record_trajectories=False)
    assert result.failed_batches == [{"batch": 1, "retry": 0, "size": 2, "error": f"RuntimeError: {message}"}]
    assert result.batches_run == 3
    samples = result.samples()
    assert samples["lost_in_failed_batches"] == 2
    assert samples["drawn"] == 6 == samples["written"] + samples["failed_sanity_check"] + 2
    assert len(result.structures) == samples["written"]
    assert [s.composition for s in result.structures[-2:]] == [s.composition for s in clean.structures[-2:]]
    assert result.structures[-1].lattice.abc == pytest.approx(clean.structures[-1].lattice.abc)
    # the redrawn first batch has a seed of its own, not the clean run's
    assert result.structures[0].lattice.abc != pytest.approx(clean.structures[0].lattice.abc)


def test_batch_seeds_depend_on_seed_batch_and_retry_alone():
    seeds = {generation.batch_seed(seed, batch, retry) for seed in (0, 1) for batch in (1, 2) for retry in (0, 1)}
    assert len(seeds) == 8 and all(0 <= s < 2**32 for s in seeds)
    assert generation.batch_seed(42, 3, 1) == generation.batch_seed(42, 3, 1)
    assert generation.batch_sizes(10, 4) == [4, 4, 2]


def with_cell_corrector(model_dir, dest, snr: float, max_step_size: float):
    """``model_dir`` on a 10-step schedule, its cell corrector overshooting (MatterGen's snr
    0.2, step up to 1e6): each Langevin step moves cells by up to sqrt(2 * max_step_size) A of
    noise, so some cells blow up (or all of them, and the sampler raises: no neighbours)."""
    import json

    from crygen import mattergen as mc
    from tests.helpers import with_diffusion_steps

    with_diffusion_steps(model_dir, dest, 10)
    info = mc.read_model_info(dest)
    info["sampling_overrides"] = [f"sampler_partial.corrector_partials.cell.snr={float(snr)}",
                                  f"sampler_partial.corrector_partials.cell.max_step_size={float(max_step_size)}"]
    (dest / mc.CRYGEN_MODEL_INFO).write_text(json.dumps(info))
    return dest


def test_samples_failing_the_sanity_check_are_counted_not_replaced(tmp_path):
    """Cells blown past 1000 A cannot be written as crystals: they are counted, not drawn
    again, and generation.json says what became of every one of the NUM_GEN samples."""
    import json

    from tests.helpers import BASE_MODEL

    model = with_cell_corrector(BASE_MODEL, tmp_path / "model", snr=20, max_step_size=5)
    out = tmp_path / "results"
    run_stage("generate", "--model", model, "--out", out, "--num-gen", 8, "--batch-size", 8, "--seed", 1,
              "--no-trajectories")
    info = json.loads((out / "generation.json").read_text())
    samples = info["samples"]
    assert samples["failed_sanity_check"] >= 1
    assert samples["lost_in_failed_batches"] == sum(f["size"] for f in samples["failed_batches"])
    assert samples["drawn"] == samples["written"] + samples["failed_sanity_check"] + samples["lost_in_failed_batches"]
    assert samples["drawn"] - samples["lost_in_failed_batches"] == 8  # NUM_GEN samples drawn, none replaced
    assert info["num_generated"] == samples["written"] == len(ase.io.read(out / "generated_crystals.extxyz", ":"))
    with zipfile.ZipFile(out / "generated_crystals_cif.zip") as zf:
        assert len(zf.namelist()) == samples["written"]


def test_a_model_whose_every_batch_fails_ends_in_one_line(tmp_path):
    """Every draw of the batch diverges after the first step (no neighbours): after the bounded
    retries generation stops with one line, and no result appears."""
    from tests.helpers import BASE_MODEL

    model = with_cell_corrector(BASE_MODEL, tmp_path / "model", snr=100, max_step_size=10)
    out = tmp_path / "results"
    proc = run_stage("generate", "--model", model, "--out", out, "--num-gen", 4, "--batch-size", 4, "--seed", 1,
                     "--no-trajectories", check=False)
    assert proc.returncode == 2
    assert error_line(proc).startswith(f"generate: error: {out / 'GENERATION_FAILED.txt'}: generation failed: "
                                       f"GenerationFailure: batch 1/1 failed on all {generation.MAX_RETRIES + 1} draws")
    assert proc.stderr.count("failed (") == generation.MAX_RETRIES  # each retry announced, then the end
    assert sorted(p.name for p in out.iterdir()) == ["GENERATION_FAILED.txt"]


def _stage_module():
    import importlib.util

    from tests.helpers import STAGES

    spec = importlib.util.spec_from_file_location("generate_stage", STAGES / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_failure_after_sampling_leaves_the_earlier_result_whole(tmp_path, fast_base_model, monkeypatch):
    """generation.json cannot be written (here: refused as it would be for a NaN) after the
    structures are drawn: the earlier result, target included, stays as it was, the failure
    is one line and GENERATION_FAILED.txt, and nothing half-written is left behind."""
    from click.testing import CliRunner

    from crygen import fileio

    out = tmp_path / "results"
    out.mkdir()
    earlier = {"generated_crystals.extxyz": "earlier structures\n", "generation.json": "{}\n",
               "metrics_summary.json": "{}\n"}
    for name, text in earlier.items():
        (out / name).write_text(text)
    real_dumps = fileio.dumps_json

    def refusing_generation_json(data, *args, **kwargs):
        if isinstance(data, dict) and "num_generated" in data:
            raise ValueError("Out of range float values are not JSON compliant: sampling_seconds")
        return real_dumps(data, *args, **kwargs)

    monkeypatch.setattr(fileio, "dumps_json", refusing_generation_json)
    proc = CliRunner().invoke(_stage_module().main, [
        "--model", str(fast_base_model), "--out", str(out), "--num-gen", "2", "--seed", "3"])
    assert proc.exit_code == 2
    assert "generation failed: ValueError: Out of range float" in proc.output
    assert {p.name: p.read_text() for p in out.iterdir() if p.name != "GENERATION_FAILED.txt"} == earlier
    assert "ValueError" in (out / "GENERATION_FAILED.txt").read_text()
    # no temporary folder left; the drawn block is kept beside the results, whole, for a rerun
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocks", "results"]
    assert [p.name for p in (tmp_path / "blocks").glob("*/*")] == ["block-000001-of-2.json.gz"]


def test_a_folder_holding_other_files_is_not_replaced(tmp_path, fast_base_model):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me\n")
    proc = run_stage("generate", "--model", fast_base_model, "--out", out, "--num-gen", 2, check=False)
    assert proc.returncode == 2
    assert error_line(proc).startswith(f"generate: error: {out}: holds files but no generation")
    assert (out / "notes.txt").read_text() == "keep me\n"


def test_a_model_failing_in_its_first_step_is_not_drawn_again(fast_base_model, monkeypatch):
    """Within the first denoising step only the model has acted on samples of the prior: no
    seed or batch size can help, so generation stops at once with the reason."""
    monkeypatch.setattr(generation, "_sampler", _sampler_failing_at_call(2, "no neighbours"))
    with pytest.raises(generation.ModelFailure, match=r"fails in the first denoising step.*no neighbours"):
        generation.generate(fast_base_model, 4, seed=1, batch_size=4, record_trajectories=False)


def test_persistent_failure_writes_generation_failed(tmp_path, tiny_model):
    """A model whose every batch diverges: GENERATION_FAILED.txt and a non-zero exit."""
    import shutil

    import torch

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken)
    ckpt = torch.load(broken / "checkpoints" / "last.ckpt", weights_only=False)
    ckpt["state_dict"] = {k: (torch.full_like(v, float("nan")) if v.is_floating_point() else v)
                          for k, v in ckpt["state_dict"].items()}
    torch.save(ckpt, broken / "checkpoints" / "last.ckpt")
    out = tmp_path / "results"
    proc = run_stage("generate", "--base-model", broken, "--finetuned", broken, "--model-out", tmp_path / "mfg",
                     "--out", out, "--num-gen", 2, "--no-trajectories", check=False)
    assert proc.returncode == 2
    assert (out / "GENERATION_FAILED.txt").is_file()
    assert "generation failed" in error_line(proc)
    assert not (out / "generated_crystals.extxyz").exists()


@pytest.mark.parametrize("num_gen", [0, -3])
def test_num_gen_must_be_positive(tmp_path, tiny_model, num_gen):
    proc = run_stage("generate", "--base-model", tiny_model, "--finetuned", tiny_model, "--model-out",
                     tmp_path / "m", "--out", tmp_path / "r", "--num-gen", num_gen, check=False)
    assert proc.returncode == 2
    assert error_line(proc) == f"generate: error: NUM_GEN={num_gen}: must be at least 1"
    assert not (tmp_path / "m").exists()


def test_auto_batch_size_is_balanced_and_bounded(tiny_model):
    from crygen import mattergen as mc

    config = mc.load_model_config(tiny_model)
    assert generation.auto_batch_size(4, config, "cpu") == 4
    big = generation.auto_batch_size(1000, config, "cpu")
    assert big <= generation.CPU_MAX_BATCH
    n_batches = -(-1000 // big)
    assert big * n_batches - 1000 < n_batches  # evenly spread, not 256 + 256 + 256 + 232


def test_auto_batch_size_on_cpu_keeps_the_real_size_in_cache():
    """MatterGen's real size samples each crystal 1.6x faster in batches of 16 than of 64 on a
    CPU (generation.CPU_BATCH_MEMORY_MB); the embedded model still takes 128 at once."""
    import yaml

    from crygen import mattergen as mc
    from tests.helpers import BASE_MODEL, MATTERGEN_CONFIGS

    real = yaml.safe_load((MATTERGEN_CONFIGS / "mattergen_base" / "config.yaml").read_text())
    assert generation.auto_batch_size(64, real, "cpu") == 16
    assert generation.auto_batch_size(10, real, "cpu") == 10
    assert generation.auto_batch_size(128, mc.load_model_config(BASE_MODEL), "cpu") == 128


@pytest.mark.slow
def test_the_memory_budget_per_structure_covers_the_real_size(published, tmp_path):
    """Peak memory of sampling batches of 1 and 9 at MatterGen's real size (3 steps), each in
    its own process: what each added structure cost is within what auto_batch_size budgets."""
    from crygen import mattergen as mc
    from tests.helpers import run_generation_probe
    from tests.helpers import RANDOM_WEIGHTS_START_TIME, with_diffusion_steps

    real_size_model = with_diffusion_steps(published("mattergen_base"), tmp_path / "model", 3,
                                           start_time=RANDOM_WEIGHTS_START_TIME)

    def peak_mb(batch: int) -> float:
        return run_generation_probe(real_size_model, batch, batch)["peak_rss_mb"]

    per_structure = (peak_mb(9) - peak_mb(1)) / 8
    budget = generation.structure_memory_mb(mc.load_model_config(real_size_model))
    print(f"{per_structure:.1f} MB per structure, {budget:.1f} MB budgeted")
    assert 5 < per_structure <= budget
