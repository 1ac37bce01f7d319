"""crygen/relaxation.py: batched relaxation with CHGNet and MatterSim checkpoints."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from tests.helpers import cif, demo_structures, run_stage


@pytest.fixture(scope="module")
def chgnet():
    from crygen.relaxation import load_potential

    return load_potential("chgnet")


def test_batched_relaxation_equals_ases_own_optimizer_with_chgnets_calculator(chgnet):
    """The batched relaxer against an independent one on the same structures: ASE's own FIRE
    loop on an ExpCellFilter (its convergence test, one structure at a time), driven by CHGNet's
    own ASE calculator (CHGNet's two differentiable passes, not crygen's batched single one).
    Both take the same algorithm from the same start, so they end at the same minimum: energies
    within 1 meV/atom and volumes within 0.5 % (float32 forces make the paths drift slightly)."""
    from ase.filters import ExpCellFilter
    from ase.optimize import FIRE
    from chgnet.model.dynamics import CHGNetCalculator
    from pymatgen.io.ase import AseAtomsAdaptor

    from crygen.relaxation import FMAX_DEFAULT, MAX_STEPS_DEFAULT, relax

    structures = demo_structures(3)
    for s in structures:
        s.scale_lattice(s.volume * 1.06)  # strained, symmetry kept: one minimum to relax into
    batched = relax(structures, chgnet)
    # a copy: the calculator sets its model's isolated-atom response, which the shared one must keep
    calculator = CHGNetCalculator(model=copy.deepcopy(chgnet.model), use_device="cpu", on_isolated_atoms="ignore")
    for s, b in zip(structures, batched):
        atoms = AseAtomsAdaptor.get_atoms(s)
        atoms.calc = calculator
        assert FIRE(ExpCellFilter(atoms), logfile=None).run(fmax=FMAX_DEFAULT, steps=MAX_STEPS_DEFAULT)
        assert b.converged and b.error is None and b.steps > 0
        assert b.energy / len(s) == pytest.approx(atoms.get_potential_energy() / len(s), abs=1e-3)
        assert b.structure.volume == pytest.approx(atoms.get_volume(), rel=5e-3)
        assert abs(b.structure.volume - s.volume) > 0.01 * s.volume  # it did move off the strained cell
    # relaxing lowers the energy of a strained structure
    start = chgnet.predict([AseAtomsAdaptor.get_atoms(structures[0])])[0][0]
    assert batched[0].energy < start


def test_matrix_log_is_scipys_logm():
    """On deformation gradients as relaxations make them (near the identity, sheared, rotated,
    isotropic, with a complex pair of eigenvalues) and on those it leaves to SciPy."""
    from scipy.linalg import logm
    from scipy.spatial.transform import Rotation

    from crygen.relaxation import matrix_log

    rng = np.random.default_rng(0)
    matrices = [np.eye(3), 1.07 * np.eye(3), np.diag([0.9, 1.0, 1.2]),
                Rotation.from_rotvec([0.1, -0.2, 0.3]).as_matrix() * 1.05,  # a complex pair
                np.array([[1.0, 1e-9, 0], [0, 1.0, 0], [0, 0, 1.0]]),  # defective: left to SciPy
                np.diag([-1.0, 1.0, 1.0])]  # a negative eigenvalue: left to SciPy
    matrices += [np.eye(3) + scale * rng.standard_normal((3, 3)) for scale in (1e-6, 0.01, 0.1, 0.3) for _ in range(25)]
    for m in matrices:
        ours, scipys = matrix_log(m), logm(m)
        assert ours.dtype == scipys.dtype and np.abs(ours - scipys).max() <= 1e-12 * max(1.0, np.abs(scipys).max()), m


def test_cell_filter_gives_ases_own_forces(chgnet):
    """The filter the relaxation uses against ASE's ExpCellFilter at the same states: strained,
    sheared and relaxed-for-a-while cells (where the exact and the naive cell gradients part)."""
    from ase.filters import ExpCellFilter
    from pymatgen.io.ase import AseAtomsAdaptor

    from crygen.relaxation import _attach, cell_filter_class

    rng = np.random.default_rng(1)
    for s in demo_structures(4):
        atoms = AseAtomsAdaptor.get_atoms(s)
        ours, theirs = cell_filter_class()(atoms.copy()), ExpCellFilter(atoms.copy())
        for shear in (0.0, 0.05, 0.3):
            deformation = np.eye(3) + shear * rng.standard_normal((3, 3))
            positions = theirs.get_positions()
            positions[len(atoms):] = deformation
            for f in (ours, theirs):
                f.set_positions(positions)
                _attach(f.atoms, *chgnet.predict([f.atoms])[0])
            assert np.abs(ours.get_forces() - theirs.get_forces()).max() <= 1e-9
            assert np.array_equal(ours.atoms.cell.array, theirs.atoms.cell.array)


def test_one_backward_pass_gives_chgnets_forces_and_stress(chgnet, monkeypatch):
    import contextlib

    import ase.io

    import crygen.relaxation as relaxation
    from tests.helpers import DEMO_DATA

    atoms = ase.io.read(DEMO_DATA, ":24")
    ours = chgnet.predict(atoms)
    monkeypatch.setattr(relaxation, "_one_backward_pass", contextlib.nullcontext)
    theirs = chgnet.predict(atoms)  # CHGNet's own two differentiable passes
    for (e1, f1, s1), (e2, f2, s2) in zip(ours, theirs):
        assert e1 == e2
        np.testing.assert_allclose(f1, f2, atol=1e-4)  # float32 summation order
        np.testing.assert_allclose(s1, s2, atol=1e-5)  # eV/A^3: 0.002 GPa
    assert max(np.abs(f).max() for _, f, _ in ours) > 0.01  # forces that are not all zero


def test_a_structure_that_cannot_be_relaxed_fails_alone(chgnet):
    from pymatgen.core import Structure

    from crygen.relaxation import relax

    good = demo_structures(1)[0]
    # a lone atom in a huge cell has no neighbours: CHGNet refuses it
    lonely = Structure([[30, 0, 0], [0, 30, 0], [0, 0, 30]], ["Na"], [[0, 0, 0]])
    results = relax([good, lonely], chgnet, max_steps=20)
    assert results[0].error is None and np.isfinite(results[0].energy)
    assert "isolated atom" in results[1].error and not results[1].converged
    assert np.isnan(results[1].energy)


def test_mattersim_checkpoint_path_is_accepted(tmp_path):
    """A MatterSim .pth as a user downloads it: here a small randomly initialised M3GNet."""
    import torch
    from mattersim.forcefield.m3gnet.m3gnet import M3Gnet

    from crygen.relaxation import load_potential, potential_identity, relax

    torch.manual_seed(0)
    model = M3Gnet(num_blocks=1, units=16, device="cpu")
    path = tmp_path / "tiny-mattersim.pth"
    torch.save({"model_name": "m3gnet", "model": model.state_dict(), "model_args": model.get_model_args()}, path)
    potential = load_potential(str(path))
    assert potential.describe()["weights_sha256"] == potential_identity(str(path))["weights_sha256"]
    results = relax(demo_structures(2), potential, max_steps=3)
    assert all(np.isfinite(r.energy) and r.steps <= 3 for r in results)


def test_unknown_or_missing_potential_is_a_one_line_error(tmp_path):
    from crygen.fileio import CrygenError
    from crygen.relaxation import load_potential

    with pytest.raises(CrygenError, match="expected one of chgnet, mattersim"):
        load_potential("mace")
    with pytest.raises(CrygenError, match="MatterSim weights not found"):
        load_potential(str(tmp_path / "absent.pth"))
    bad = tmp_path / "bad.pth"
    bad.write_text("not a checkpoint")
    with pytest.raises(CrygenError, match="not a MatterSim checkpoint"):
        load_potential(str(bad))
    folder = tmp_path / "cifs"
    folder.mkdir()
    (folder / "a.cif").write_text(cif(["Na", "Cl"], [(0, 0, 0), (0.5, 0.5, 0.5)]))
    # (the default reference is CHGNet's: any MatterSim file is first a mismatch, allowed here)
    proc = run_stage("evaluate_generated", "--results", folder, "--potential", bad, "--allow-potential-mismatch",
                     "--out", tmp_path / "eval", check=False)
    assert proc.returncode == 2 and "not a MatterSim checkpoint" in proc.stderr.splitlines()[-1]
