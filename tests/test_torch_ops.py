"""crygen/mattergen/torch_ops.py against the compiled torch_scatter and torch_sparse: the
operations alone on awkward inputs, and MatterGen's denoiser scores and training loss and
gradients on real sampler states, each computed with the compiled packages and with the plain ones."""

from __future__ import annotations

import contextlib
import sys

import pytest
import torch

from crygen.mattergen import torch_ops
from tests.helpers import WITHOUT_COMPILED_OPS

from crygen import provided_modules

import torch_scatter  # noqa: E402  (the compiled package, or crygen's plain one where it is absent)
import torch_sparse  # noqa: E402

if provided_modules.provided("torch_scatter") or provided_modules.provided("torch_sparse"):
    torch_scatter = torch_sparse = None  # not installed: only the comparisons skip
needs_compiled = pytest.mark.skipif(
    torch_scatter is None, reason="compares with the compiled torch_scatter/torch_sparse, which this environment "
                                  "does not have (optional: make setup-compiled-ops, about 25 min of compiling)")

NAMES = ("scatter", "scatter_add", "segment_csr", "segment_coo", "SparseTensor")


@contextlib.contextmanager
def plain_ops():
    """MatterGen's modules calling crygen's plain versions in place of the compiled ones."""
    compiled = {name: getattr(torch_sparse if name == "SparseTensor" else torch_scatter, name) for name in NAMES}
    swapped = []
    for module in [m for name, m in sys.modules.items() if name.startswith("mattergen.") and m is not None]:
        for name, op in compiled.items():
            if getattr(module, name, None) is op:
                setattr(module, name, getattr(torch_ops, name))
                swapped.append((module, name, op))
    try:
        yield len(swapped)
    finally:
        for module, name, op in swapped:
            setattr(module, name, op)


@needs_compiled
def test_scatter_reductions_equal_torch_scatters():
    gen = torch.Generator().manual_seed(0)
    for reduce in ("sum", "add", "mean", "max", "min"):
        for dim, shape in ((0, (50, 3)), (-1, (4, 50)), (1, (2, 50, 5))):
            src = torch.randn(shape, generator=gen)
            index = torch.randint(0, 9, (50,), generator=gen)  # some slots empty with dim_size 12
            for dim_size in (None, 12):
                expected = torch_scatter.scatter(src, index, dim=dim, dim_size=dim_size, reduce=reduce)
                got = torch_ops.scatter(src, index, dim=dim, dim_size=dim_size, reduce=reduce)
                assert got.shape == expected.shape and torch.allclose(got, expected, rtol=1e-6, atol=1e-6), (reduce, dim)
    counts = torch.randint(0, 4, (30,), generator=gen)  # integer sums, as MatterGen's counts
    index = torch.randint(0, 7, (30,), generator=gen)
    assert torch.equal(torch_ops.scatter_add(counts, index), torch_scatter.scatter_add(counts, index))
    assert torch.equal(torch_ops.scatter(counts, index, reduce="mean"), torch_scatter.scatter(counts, index, reduce="mean"))


@needs_compiled
def test_segments_equal_torch_scatters():
    gen = torch.Generator().manual_seed(1)
    src = torch.randint(0, 5, (40,), generator=gen)
    indptr = torch.tensor([0, 0, 3, 10, 10, 25])  # empty segments, and src beyond the last
    assert torch.equal(torch_ops.segment_csr(src[:25], indptr), torch_scatter.segment_csr(src[:25], indptr))
    assert torch.equal(torch_ops.segment_csr(src, indptr), torch_scatter.segment_csr(src[:25], indptr))
    index = torch.sort(torch.randint(0, 6, (40,), generator=gen)).values
    for dim_size in (None, 9):
        assert torch.equal(torch_ops.segment_coo(src, index, dim_size=dim_size),
                           torch_scatter.segment_coo(src, index, dim_size=dim_size))


@needs_compiled
def test_sparse_row_selection_lists_triplets_as_torch_sparse_does():
    """GemNet's use: rows selected by each edge's target, repeated edges (periodic images) kept."""
    gen = torch.Generator().manual_seed(2)
    for atoms, edges in ((5, 40), (30, 600), (1, 6)):
        row = torch.randint(0, atoms, (edges,), generator=gen)
        col = torch.randint(0, atoms, (edges,), generator=gen)
        value = torch.arange(edges)
        kwargs = dict(row=row, col=col, value=value, sparse_sizes=(atoms, atoms))
        expected = torch_sparse.SparseTensor(**kwargs)[row]
        got = torch_ops.SparseTensor(**kwargs)[row].to("cpu")
        for part in ("row", "col", "value"):
            assert torch.equal(getattr(got.storage, part)(), getattr(expected.storage, part)()), part


def _denoiser_calls(model_dir, n):
    from mattergen.denoiser import GemNetTDenoiser

    from tests.test_mattergen_compat import _sampler_calls

    return _sampler_calls(model_dir, n, 3, GemNetTDenoiser, "forward")[1]


@needs_compiled
@pytest.mark.parametrize("model", ["fast_base_model", "real_size_model"])
def test_denoiser_scores_on_sampler_states_equal_the_compiled_ops(model, request):
    from crygen import mattergen as mc

    model_dir = request.getfixturevalue(model)
    module = mc.load_lightning_module(model_dir)
    calls = _denoiser_calls(model_dir, 6 if model == "fast_base_model" else 2)
    assert calls
    for (_, x, t), _ in calls[:: max(1, len(calls) // (8 if model == "fast_base_model" else 3))]:
        with torch.no_grad():
            expected = module.diffusion_module.model(x, t)
            with plain_ops() as swapped:
                got = module.diffusion_module.model(x, t)
        assert swapped >= 5  # gemnet's scatter and SparseTensor, the utils' segment ops, ...
        for field in ("pos", "cell", "atomic_numbers"):
            assert torch.equal(expected[field], got[field]), field


@needs_compiled
def test_training_loss_and_gradients_equal_the_compiled_ops(fast_base_model):
    """A training step's loss (noise, corruption, per-field losses) and its gradients, on the
    crystals a sampling run ended with."""
    from crygen import mattergen as mc

    module = mc.load_lightning_module(fast_base_model)
    (_, x, _), _ = _denoiser_calls(fast_base_model, 6)[-1]

    def loss_and_grads():
        module.zero_grad()
        torch.manual_seed(7)
        loss, _ = module.diffusion_module.calc_loss(x)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in module.parameters() if p.grad is not None]

    expected = loss_and_grads()
    with plain_ops():
        got = loss_and_grads()
    assert torch.isfinite(expected[0]) and torch.equal(expected[0], got[0])
    assert len(expected[1]) == len(got[1]) > 0
    worst = max(float((e - g).abs().max() / e.abs().max().clamp(min=1e-30)) for e, g in zip(*[expected[1], got[1]]))
    assert worst < 1e-5, worst


# A process in which torch_scatter and torch_sparse cannot be found (as where they are not
# installed) samples with crygen's provided modules; the crystals are printed as JSON.
HIDDEN = WITHOUT_COMPILED_OPS + """
import json
from pathlib import Path
import torch
torch.set_num_threads(1)
from crygen import provided_modules
from crygen.generation import generate
result = generate(Path(sys.argv[1]), 4, seed=5, batch_size=4, record_trajectories=False, log=lambda m: None)
import torch_geometric.typing as pyg
print(json.dumps({"provided": [provided_modules.provided(m) for m in ("torch_scatter", "torch_sparse")],
                  "pyg_sees": [pyg.WITH_TORCH_SCATTER, pyg.WITH_TORCH_SPARSE],
                  "crystals": [s.as_dict() for s in result.structures]}))
"""


def test_without_the_compiled_packages_mattergen_samples_the_same_crystals(fast_base_model):
    """Hidden, the compiled packages are replaced by the provided ones, which torch_geometric does
    not take for its own; the crystals are those the compiled ones give (where installed)."""
    import json
    import subprocess

    from tests.helpers import subprocess_env

    runs = {}
    for how in ("hide", "keep"):
        proc = subprocess.run([sys.executable, "-c", HIDDEN, str(fast_base_model)], capture_output=True, text=True,
                              env=subprocess_env({"HIDE_COMPILED_OPS": "1" if how == "hide" else "0"}), check=True)
        runs[how] = json.loads(proc.stdout.strip().splitlines()[-1])
    # where the compiled packages are not installed, both runs use the plain ones (the crystals
    # then equal MatterGen's through test_mattergen_compat's own tests)
    compiled = torch_scatter is not None
    assert runs["hide"]["provided"] == [True, True] and runs["keep"]["provided"] == [not compiled] * 2
    assert runs["hide"]["pyg_sees"] == [False, False]  # torch_geometric keeps its own code paths
    assert len(runs["hide"]["crystals"]) == 4 and runs["hide"]["crystals"] == runs["keep"]["crystals"]


MATTERGEN_ALONE = WITHOUT_COMPILED_OPS + """
import mattergen.generator  # MatterGen's own entry point, nothing of crygen imported by this script
from mattergen.common.gemnet import gemnet
print("LOADED", gemnet.SparseTensor.__module__)
"""


def test_mattergens_own_scripts_find_the_provided_modules():
    """MatterGen's own scripts in crygen's venv (mattergen-generate, a CrystalGenerator in a fresh
    process) import torch_scatter before anything of crygen: crygen.pth installs the finder."""
    import subprocess

    from tests.helpers import subprocess_env

    env = subprocess_env({"PYTHONPATH": None, "HIDE_COMPILED_OPS": "1"})  # a user's shell: only the venv's crygen.pth
    proc = subprocess.run([sys.executable, "-c", MATTERGEN_ALONE], capture_output=True, text=True, env=env, cwd="/")
    assert "LOADED crygen.mattergen.torch_ops" in proc.stdout, proc.stderr[-2000:]
