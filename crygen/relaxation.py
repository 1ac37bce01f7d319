"""Relaxation of crystals with a machine-learned potential, many structures per model call.

``POTENTIAL`` names a potential: ``chgnet`` (its weights ship in the chgnet wheel, so it works
offline), ``mattersim`` (MatterSim-v1.0.0-1M, only when its weights are already in MatterSim's
cache folder: nothing is downloaded) or a path to a MatterSim ``.pth`` checkpoint. Each is a
class in :data:`POTENTIALS` that predicts energy, forces and stress for a list of structures
at once.

The optimiser follows MatterGen's own evaluation (MatterSim's ``BatchRelaxer``): ASE FIRE on
an ``ExpCellFilter`` (its matrix logarithm computed faster, :func:`matrix_log`), converged when
the largest force on atoms and cell is below ``fmax`` (0.05 eV/A). Structures enter the batch
as others finish, up to ``max_atoms_per_batch`` atoms, so one model call serves every structure
still relaxing; a structure whose prediction fails or blows up is marked failed instead of
stopping the run.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from crygen.fileio import CrygenError, one_line, sha256_file
from crygen.settings import BY_NAME as SETTINGS_BY_NAME

FMAX_DEFAULT = 0.05  # eV/A, as MatterGen's relax_structures
MAX_STEPS_DEFAULT = int(SETTINGS_BY_NAME["RELAX_STEPS"].default)  # the RELAX_STEPS setting's
MAX_ATOMS_PER_BATCH_DEFAULT = 512  # MatterSim BatchRelaxer's default
MATTERSIM_CACHE = Path("~/.local/mattersim/pretrained_models").expanduser()
MATTERSIM_DEFAULT_WEIGHTS = "mattersim-v1.0.0-1M.pth"
GPA_TO_EV_PER_A3 = 1 / 160.21766208


class Potential:
    """Energies (eV), forces (eV/A) and stresses (3x3, eV/A^3, ASE's sign) for many structures."""

    name: str = ""
    # What its energies need to sit on an MP2020-compatible hull (the scale of MatterGen's
    # Alex-MP-20 reference and of crygen's default): "MP2020" for a potential trained on raw
    # PBE(+U) energies, "none" for one whose training energies carried MP2020 corrections.
    energy_correction: str = "MP2020"

    def predict(self, atoms_list: Sequence[Any]) -> list[tuple[float, np.ndarray, np.ndarray]]:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """What the output records about the potential: name, weights file and its hash."""
        return _identity(self.name, self.weights)


def _identity(name: str, weights: Path) -> dict[str, Any]:
    return {"name": name, "weights": weights.name, "weights_sha256": sha256_file(weights)}


def chgnet_weights() -> Path:
    import chgnet

    return next((Path(chgnet.__file__).parent / "pretrained" / "0.3.0").glob("*.pth.tar"))


class CHGNetPotential(Potential):
    name = "chgnet"
    # CHGNet 0.3.0 was trained on MPtrj energies with MP2020 corrections applied: on MPtrj
    # frames it lands 0.02 eV/atom from raw+MP2020 and 0.45 from raw (oxides, halides), so
    # MatterGen's MP2020 step would correct it twice.
    energy_correction = "none"

    def __init__(self, device: str = "cpu"):
        from chgnet.model import CHGNet

        self.model = CHGNet.load(model_name="0.3.0", use_device=device, verbose=False)
        self.model.eval()
        self.weights = chgnet_weights()

    def predict(self, atoms_list):
        from pymatgen.io.ase import AseAtomsAdaptor

        structures = [AseAtomsAdaptor.get_structure(a) for a in atoms_list]
        with warnings.catch_warnings(), _one_backward_pass():
            warnings.simplefilter("ignore")
            preds = self.model.predict_structure(structures, task="efs", batch_size=len(structures))
        if isinstance(preds, dict):
            preds = [preds]
        return [
            (float(p["e"]) * len(a), np.asarray(p["f"], dtype=float), np.asarray(p["s"], dtype=float) * GPA_TO_EV_PER_A3)
            for p, a in zip(preds, atoms_list)
        ]


@contextlib.contextmanager
def _one_backward_pass() -> Iterator[None]:
    """Forces and stress from one backward pass instead of CHGNet's two.

    CHGNet asks autograd for d(energy)/d(positions), then d(energy)/d(strain), each building a
    differentiable graph (``create_graph=True``, needed only when training on forces). For
    inference both gradients come from a single pass without that graph: the same numbers up
    to float32 rounding (tests/test_relaxation.py), in less than half the time on a CPU."""
    import torch

    from crygen import patches

    original = torch.autograd.grad
    pending: list = []

    def grad(outputs, inputs, *args, **kwargs):
        if pending:  # the strain gradient, computed with the positions' one
            return pending.pop()
        frame = inspect.currentframe().f_back
        graph = frame.f_locals.get("g") if frame is not None else None  # CHGNet._compute's BatchedGraph
        strains = getattr(graph, "strains", None)
        if strains is None or inputs is not graph.atom_positions:
            return original(outputs, inputs, *args, **kwargs)
        both = original(outputs, [*inputs, *strains])
        pending.append(tuple(both[len(inputs):]))
        return tuple(both[: len(inputs)])

    with patches.applied("relaxation.one_backward_pass", relaxation__one_backward_pass=grad):
        yield


class MatterSimPotential(Potential):
    name = "mattersim"

    def __init__(self, weights: str | os.PathLike | None = None, device: str = "cpu"):
        from mattersim.forcefield.potential import Potential as MSPotential

        path = Path(weights) if weights else MATTERSIM_CACHE / MATTERSIM_DEFAULT_WEIGHTS
        if not path.is_file():
            raise CrygenError(path, "MatterSim weights not found (crygen never downloads them: "
                              "give POTENTIAL=<path to a .pth> or use POTENTIAL=chgnet)")
        try:
            self.model = MSPotential.from_checkpoint(load_path=str(path), device=device, load_training_state=False)
        except Exception as e:  # a truncated or foreign file
            raise CrygenError(path, f"not a MatterSim checkpoint ({one_line(e)})") from None
        self.weights = path

    def predict(self, atoms_list):
        from mattersim.datasets.utils.build import build_dataloader

        loader = build_dataloader(list(atoms_list), batch_size=len(atoms_list), only_inference=True)
        energies, forces, stresses = self.model.predict_properties(loader, include_forces=True, include_stresses=True)
        return [
            (float(e), np.asarray(f, dtype=float), np.asarray(s, dtype=float) * GPA_TO_EV_PER_A3)
            for e, f, s in zip(energies, forces, stresses)
        ]


POTENTIALS: dict[str, type[Potential]] = {"chgnet": CHGNetPotential, "mattersim": MatterSimPotential}


def load_potential(spec: str, device: str = "cpu") -> Potential:
    """``chgnet``, ``mattersim`` or a path to a MatterSim ``.pth``."""
    if spec in POTENTIALS:
        return POTENTIALS[spec](device=device)
    if spec.endswith(".pth") or Path(spec).exists():
        return MatterSimPotential(weights=spec, device=device)
    raise CrygenError(None, f"POTENTIAL={spec}: expected one of {', '.join(POTENTIALS)} or a path to a MatterSim .pth")


def energy_correction(spec: str) -> str:
    """The correction (``Potential.energy_correction``) the potential ``spec`` names needs."""
    return (POTENTIALS[spec] if spec in POTENTIALS else MatterSimPotential).energy_correction


def correction_scheme(correction: str) -> Any:
    """The pymatgen ``Compatibility`` MatterGen applies for ``correction`` (its
    ``energy_correction_scheme``): MP2020, or MatterGen's identity scheme for "none"."""
    from mattergen.evaluation.utils.vasprunlike import IdentityCorrectionScheme
    from pymatgen.entries.compatibility import MaterialsProject2020Compatibility

    schemes = {"MP2020": MaterialsProject2020Compatibility, "none": IdentityCorrectionScheme}
    if correction not in schemes:
        raise CrygenError(None, f"energy correction {correction!r}: expected one of {', '.join(schemes)}")
    return schemes[correction]()


CORRECTION_DESCRIPTIONS = {
    "MP2020": "MaterialsProject2020Compatibility, as MatterGen applies it (potential trained on raw PBE(+U) energies)",
    "none": "none: the potential's energies carry MP2020 corrections already (trained on MP2020-corrected MPtrj)",
}


def potential_identity(spec: str) -> dict[str, Any]:
    """Name and weights hash of a potential without loading it (to decide whether to recompute)."""
    if spec == "chgnet":
        path = chgnet_weights()
    elif spec == "mattersim":
        path = MATTERSIM_CACHE / MATTERSIM_DEFAULT_WEIGHTS
    else:
        path = Path(spec)
    if not path.is_file():
        load_potential(spec)  # raises the one-line error that names the problem
    return _identity(spec if spec in POTENTIALS else "mattersim", path)


@dataclass
class Relaxed:
    structure: Any  # pymatgen Structure at the last evaluated geometry
    energy: float  # total energy there (eV); nan when the relaxation failed
    steps: int
    converged: bool
    error: str | None = None


def _attach(atoms: Any, energy: float, forces: np.ndarray, stress: np.ndarray) -> None:
    """Give the optimiser what the last batched call predicted for ``atoms``."""
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.stress import full_3x3_to_voigt_6_stress

    atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces, stress=full_3x3_to_voigt_6_stress(stress))


def relax(
    structures: Sequence[Any],
    potential: Potential,
    fmax: float = FMAX_DEFAULT,
    max_steps: int = MAX_STEPS_DEFAULT,
    max_atoms_per_batch: int = MAX_ATOMS_PER_BATCH_DEFAULT,
    progress: bool = False,
) -> list[Relaxed]:
    """Relax every structure; ``max_atoms_per_batch=0`` relaxes one structure at a time.
    ``progress``: a line (``crygen.cli.say``) each time another tenth of the structures is done."""
    from pymatgen.io.ase import AseAtomsAdaptor
    from threadpoolctl import threadpool_limits

    from crygen.cli import say

    results: list[Relaxed | None] = [None] * len(structures)
    pending = list(range(len(structures)))[::-1]
    active: dict[int, tuple[Any, Any, list]] = {}  # index -> (atoms, optimiser, [steps])

    report_every = max(1, -(-len(structures) // 10))  # a tenth, rounded up
    done = 0

    def finish(i: int, energy: float, converged: bool, error: str | None = None) -> None:
        nonlocal done
        atoms, _, steps = active.pop(i)
        results[i] = Relaxed(AseAtomsAdaptor.get_structure(atoms), energy, steps[0], converged, error)
        done += 1
        if progress and (done % report_every == 0 or done == len(structures)):
            say(f"relax: {done}/{len(structures)} structures done")
    # The optimiser's 3x3 and 6x6 algebra (solve, expm, logm) on a multi-threaded BLAS wakes
    # threads that then contend with torch's just-finished OpenMP threads: one BLAS thread made
    # 64 crystals' relaxation 30 % faster here, with the same steps and energies. torch's own
    # threads are not BLAS's (limited here through ``user_api="blas"`` only).
    with threadpool_limits(limits=1, user_api="blas"):
        while pending or active:
            _fill_batch(structures, pending, active, max_atoms_per_batch)
            order = list(active)
            predictions = _predict_batch(potential, [active[i][0] for i in order])
            for i, pred in zip(order, predictions):
                outcome = _step(active[i], pred, fmax, max_steps)
                if outcome is not None:
                    finish(i, *outcome)
    return results  # type: ignore[return-value]


def matrix_log(matrix: np.ndarray) -> np.ndarray:
    """``scipy.linalg.logm`` of a real 3x3 matrix, from its eigendecomposition.

    ASE's ``ExpCellFilter`` takes the logarithm of the cell's deformation gradient at every
    force evaluation. SciPy 1.17's ``logm`` spends 10-25 ms on a 3x3 matrix (its general
    Schur-Pade algorithm), more than CHGNet's share of a batched step; this takes 0.05 ms and
    agrees to rounding (tests/test_relaxation.py). Nearly dependent eigenvectors, or an
    eigenvalue on the negative real axis, go to SciPy."""
    w, v = np.linalg.eig(matrix)
    if np.linalg.cond(v) > 1e6 or np.any((w.imag == 0) & (w.real <= 0)):
        from scipy.linalg import logm

        return logm(matrix)
    return ((v * np.log(w)) @ np.linalg.inv(v)).real


@functools.cache
def cell_filter_class() -> type:
    """ASE's ``ExpCellFilter`` (MatterGen's and MatterSim's choice) with :func:`matrix_log` as its
    matrix logarithm: ``__init__`` keeps ``logm`` on the instance and ``get_forces`` calls only
    that (ase 3.25.0, as pinned; tests/test_relaxation.py compares the forces with ASE's own)."""
    from ase.filters import ExpCellFilter

    class ExpCellFilterFastLog(ExpCellFilter):
        def __init__(self, atoms, *args, **kwargs):
            super().__init__(atoms, *args, **kwargs)
            self.logm = matrix_log

    return ExpCellFilterFastLog


def _fill_batch(structures: Sequence[Any], pending: list[int], active: dict[int, tuple[Any, Any, list]],
                max_atoms_per_batch: int) -> None:
    """Start structures (from the end of ``pending``) as others finish, never above the atom budget."""
    from ase.optimize import FIRE
    from pymatgen.io.ase import AseAtomsAdaptor

    while pending and (not active or max_atoms_per_batch > 0 and
                       sum(len(a) for a, _, _ in active.values()) + len(structures[pending[-1]]) <= max_atoms_per_batch):
        i = pending.pop()
        atoms = AseAtomsAdaptor.get_atoms(structures[i])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            opt = FIRE(cell_filter_class()(atoms), logfile=None)
        active[i] = (atoms, opt, [0])


def _predict_batch(potential: Potential, atoms_list: list[Any]) -> list[Any]:
    """The potential's predictions for ``atoms_list`` in one call; when that fails, one call per
    structure (one bad structure must not sink the batch), an exception in place of each that fails."""
    try:
        return potential.predict(atoms_list)
    except Exception as e:
        if len(atoms_list) > 1:
            predictions: list[Any] = []
            for atoms in atoms_list:
                try:
                    predictions.append(potential.predict([atoms])[0])
                except Exception as e1:
                    predictions.append(e1)
            return predictions
        return [e]


def _step(entry: tuple[Any, Any, list], prediction: Any, fmax: float,
          max_steps: int) -> tuple[float, bool, str | None] | None:
    """One optimiser step of a structure from its ``prediction``, or how it ended (energy,
    converged, error) when it failed, converged or ran out of steps."""
    atoms, opt, steps = entry
    if isinstance(prediction, Exception):
        return float("nan"), False, one_line(prediction)
    energy, forces, stress = prediction
    if not (np.isfinite(energy) and np.all(np.isfinite(forces)) and np.all(np.isfinite(stress))):
        return float("nan"), False, "potential returned non-finite values"
    _attach(atoms, energy, forces, stress)
    filter_forces = opt.optimizable.get_forces()  # the cell filter's: computed once, used twice
    fmax_now = np.linalg.norm(filter_forces, axis=1).max()
    if fmax_now < fmax or steps[0] >= max_steps:
        return energy, bool(fmax_now < fmax), None
    opt.step(filter_forces)
    steps[0] += 1
    return None
