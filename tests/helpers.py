"""Test helpers and paths to test data (one module, reached by Path constants)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ROOT / "stages"
DEMO_DATA = ROOT / "data" / "alexandria" / "alexandria-random-1k.xyz"
BASE_MODEL = ROOT / "data" / "base_model"
TEST_FILES = ROOT / "tests" / "files"
# MatterGen's nine published config.yaml files (../shared/README.md); their weights cannot be
# downloaded here, so tests and benchmarks give them random ones
MATTERGEN_CONFIGS = ROOT.parent / "shared" / "mattergen-configs"
PUBLISHED_MODELS = ("mattergen_base", "mp_20_base", "chemical_system", "chemical_system_energy_above_hull",
                    "dft_band_gap", "dft_mag_density", "dft_mag_density_hhi_score", "ml_bulk_modulus",
                    "space_group")

NACL_CIF = """data_NaCl
_symmetry_space_group_name_H-M   'P 1'
_cell_length_a   4.0
_cell_length_b   4.0
_cell_length_c   4.0
_cell_angle_alpha   90
_cell_angle_beta   90
_cell_angle_gamma   90
_symmetry_Int_Tables_number   1
loop_
 _symmetry_equiv_pos_as_xyz
  'x, y, z'
loop_
 _atom_site_type_symbol
 _atom_site_label
 _atom_site_fract_x
 _atom_site_fract_y
 _atom_site_fract_z
 _atom_site_occupancy
  Na  Na0  0.0  0.0  0.0  1
  Cl  Cl1  0.5  0.5  0.5  1
"""


def cif(symbols: list[str], frac: list[tuple[float, float, float]], a: float = 4.0, name: str = "X") -> str:
    """A P1 cubic CIF with the given sites."""
    head = NACL_CIF.split("loop_")[0].replace("data_NaCl", f"data_{name}").replace("4.0", f"{a}")
    rows = "\n".join(f"  {s}  {s}{i}  {x}  {y}  {z}  1" for i, (s, (x, y, z)) in enumerate(zip(symbols, frac)))
    return (head + "loop_\n _symmetry_equiv_pos_as_xyz\n  'x, y, z'\nloop_\n _atom_site_type_symbol\n"
            " _atom_site_label\n _atom_site_fract_x\n _atom_site_fract_y\n _atom_site_fract_z\n"
            f" _atom_site_occupancy\n{rows}\n")


def small_demo_frames(n: int, start: int = 0) -> list:
    """The first ``n`` generatable demo crystals of at most 8 atoms, as ASE Atoms."""
    import ase.io

    from crygen.structures import generatable_elements

    allowed = generatable_elements()
    frames = [a for a in ase.io.read(DEMO_DATA, ":") if set(a.numbers) <= allowed and len(a) <= 8]
    return frames[start : start + n]


def demo_subset(dest: Path, n: int, start: int = 0) -> Path:
    """:func:`small_demo_frames` as an extxyz file."""
    import ase.io

    ase.io.write(dest, small_demo_frames(n, start), format="extxyz")
    return dest


def demo_structures(n: int, start: int = 0) -> list:
    """:func:`small_demo_frames` as pymatgen Structures."""
    from pymatgen.io.ase import AseAtomsAdaptor

    return [AseAtomsAdaptor.get_structure(a) for a in small_demo_frames(n, start)]


# Random weights of MatterGen's size give a cell score of ~1e-3 on samples of the prior, where
# a trained model gives ~1 (the embedded one: 2-5); the sampler's Langevin corrector, whose step
# grows as 1/|score|^2, then blows every cell up in its first step (crygen.generation.ScoreProbe
# says so in one line). Scaling the cell-score output layers by this puts them at a trained
# model's magnitude (2-4 on the prior), so the sampler can run on a random model.
SAMPLEABLE_CELL_SCORE_SCALE = 3000.0
# Even then random scores point nowhere: the reverse SDE's drift widens a cell's deviation from
# the prior's mean by e^(0.5*integral of beta) unless the score pulls it back, ~150x from t=1
# and every cell loses its neighbours within a few steps; from t=0.5 it is ~3.6x, so a random
# model's sampling runs to the end (a test-only shortcut, like the coarser schedule).
RANDOM_WEIGHTS_START_TIME = 0.5
SAMPLING_STEPS = 10  # the schedule tests sample random real-size models on


def published_model_dir(name: str, dest: Path, seed: int = 0, cell_score_scale: float = 1.0) -> Path:
    """A MatterGen model dir with MatterGen's published ``config.yaml`` for ``name``, copied
    unchanged, and a checkpoint of random weights for it (44.6 M parameters, ~171 MB), the
    cell-score output layers scaled by ``cell_score_scale``."""
    import shutil

    import pytorch_lightning
    import torch
    from hydra.utils import instantiate

    from crygen import mattergen as mc

    source = MATTERGEN_CONFIGS / name / "config.yaml"
    if not source.is_file():
        raise AssertionError(f"{source} missing: the published configs live in ../shared/mattergen-configs")
    (dest / "checkpoints").mkdir(parents=True)
    shutil.copy(source, dest / "config.yaml")
    config = mc.load_model_config(dest)
    mc.ensure_mattergen_files()
    mc.register_properties(mc.model_properties(config))
    torch.manual_seed(seed)
    module = instantiate(config["lightning_module"])
    with torch.no_grad():
        for block in module.diffusion_module.model.gemnet.lattice_out_blocks:
            block.out_forces.linear.weight.mul_(cell_score_scale)
        # a published checkpoint carries its property scalers fitted to MatterGen's data; an
        # unfitted one holds whatever torch.empty left (NaN embeddings)
        for scaler in module.modules():
            if type(scaler).__name__ == "StandardScalerTorch":
                scaler.means.fill_(0.0)
                scaler.stds.fill_(1.0)
    torch.save({"state_dict": module.state_dict(), "pytorch-lightning_version": pytorch_lightning.__version__},
               dest / "checkpoints" / "last.ckpt")
    return dest


def with_diffusion_steps(model_dir: Path, dest: Path, steps: int, start_time: float | None = None) -> Path:
    """``model_dir`` sampled with ``steps`` reverse steps instead of its own (the checkpoint
    linked, not copied): the same continuous-time denoiser, on a coarser schedule, so a test
    runs the whole sampler in seconds. ``start_time``: denoise from there instead of t=1
    (MatterGen's ``max_t``, through the dir's ``sampling_overrides``), for random weights
    (see RANDOM_WEIGHTS_START_TIME)."""
    import json

    import yaml

    from crygen import mattergen as mc

    (dest / "checkpoints").mkdir(parents=True)
    (dest / "checkpoints" / "last.ckpt").symlink_to((model_dir / "checkpoints" / "last.ckpt").resolve())
    info = mc.read_model_info(model_dir)
    if start_time is not None:
        info["sampling_overrides"] = [f"+sampler_partial.max_t={start_time}"]
    if info:
        (dest / mc.CRYGEN_MODEL_INFO).write_text(json.dumps(info, indent=2))
    config = mc.load_model_config(model_dir)
    d3pm = config["lightning_module"]["diffusion_module"]["corruption"]["discrete_corruptions"]["atomic_numbers"]
    d3pm["d3pm"]["schedule"]["num_steps"] = steps
    (dest / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return dest


PROPS = "band_gap,solid_electrolyte"
SOLID_ELECTROLYTE = ["yes", "no", "", "true", "0"]  # binary in every spelling, one missing


def write_property_csv(path: Path, n: int = 30) -> Path:
    """Demo crystals with a scalar (every 7th missing) and a binary property column."""
    import csv

    import numpy as np
    from pymatgen.io.cif import CifWriter

    rng = np.random.default_rng(0)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["material_id", "cif", "band_gap", "solid_electrolyte", "note"])
        for i, s in enumerate(demo_structures(n)):
            band_gap = "" if i % 7 == 3 else f"{rng.uniform(0, 4):.3f}"
            writer.writerow([f"m{i}", str(CifWriter(s)), band_gap, SOLID_ELECTROLYTE[i % 5], ""])
    return path


def run_stage(name: str, *args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``stages/<name>.py`` as a user would, in a subprocess (``env``: variables to set,
    None to unset)."""
    proc = subprocess.run(
        [sys.executable, str(STAGES / f"{name}.py"), *map(str, args)],
        capture_output=True, text=True, env=subprocess_env(env),
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def subprocess_env(changes: dict | None = None) -> dict:
    """This process's environment with ``changes``: a value sets a variable, None unsets it."""
    merged = {**os.environ, **(changes or {})}
    return {k: v for k, v in merged.items() if v is not None}


def gpu_env() -> dict:
    """The environment for a subprocess that may use the GPUs the tests' own process hides."""
    user = os.environ.get("CRYGEN_USER_CUDA_VISIBLE_DEVICES", "<unset>")
    return {"CUDA_VISIBLE_DEVICES": None if user == "<unset>" else user}


def cuda_available() -> bool:
    """Whether torch sees a CUDA device once the tests hand the GPUs back (asked in a subprocess)."""
    proc = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
                          capture_output=True, text=True, env=subprocess_env(gpu_env()))
    return proc.stdout.strip() == "True"


def make(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """``make -C ROOT args...`` as a user would type it."""
    proc = subprocess.run(["make", "-C", str(ROOT), *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"make {' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return proc


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The last non-empty stderr line that is not make's: where a stage states its one-line
    error (make then adds its own `make: *** [target] Error 2`)."""
    lines = [l for l in proc.stderr.splitlines() if l.strip() and not l.startswith("make")]
    return lines[-1] if lines else ""


# ---------------------------------------------------------------- real daemons on loopback
# Each runs in the foreground under its own Popen, so it is stopped by its own PID.
# CI (.ci/run) installs them and sets CRYGEN_REQUIRE_DAEMONS=1: a missing one then fails
# instead of skipping.


def require_programs(*names: str, packages: str = "openssh-server slurmctld slurmd slurm-client munge") -> None:
    import shutil

    import pytest

    missing = [n for n in names if not shutil.which(n, path=os.environ["PATH"] + ":/usr/sbin")]
    if missing:
        message = f"not installed: {', '.join(missing)} (apt-get install {packages})"
        if os.environ.get("CRYGEN_REQUIRE_DAEMONS") == "1":
            pytest.fail(message)
        pytest.skip(message)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, what: str, timeout: float = 30.0) -> None:
    import time

    end = time.time() + timeout
    while time.time() < end:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what} did not come up within {timeout:.0f} s")


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class Daemons:
    """munged + slurmctld + slurmd (one-node Slurm) and an sshd, all on 127.0.0.1 under ``root``."""

    def __init__(self, root: Path):
        self.root = root
        self.procs: list[subprocess.Popen] = []
        self.env = dict(os.environ)

    def _start(self, argv: list[str], log: str) -> subprocess.Popen:
        proc = subprocess.Popen(argv, stdout=open(self.root / log, "w"), stderr=subprocess.STDOUT, env=self.env)
        self.procs.append(proc)
        return proc

    def start_slurm(self) -> Path:
        import socket

        d = self.root
        munge = d / "munge"
        munge.mkdir(mode=0o755)
        munge.chmod(0o755)  # munged insists on this for its socket folder
        subprocess.run(["mungekey", "--create", f"--keyfile={munge / 'munge.key'}", "--force"], check=True)
        (munge / "munge.key").chmod(0o400)
        self._start(["munged", "--foreground", "--force", f"--socket={munge / 'munge.sock'}",
                     f"--key-file={munge / 'munge.key'}", f"--log-file={munge / 'log'}",
                     f"--pid-file={munge / 'pid'}", f"--seed-file={munge / 'seed'}"], "munged.out")
        wait_for(lambda: (munge / "munge.sock").exists(), "munged")
        node = socket.gethostname().split(".")[0]
        for sub in ("state", "spool"):
            (d / sub).mkdir()
        ctld_port, slurmd_port = free_port(), free_port()
        conf = d / "slurm.conf"
        conf.write_text("\n".join([
            "ClusterName=crygen-test", f"SlurmctldHost={node}(127.0.0.1)",
            f"SlurmctldPort={ctld_port}", f"SlurmdPort={slurmd_port}",
            "SlurmUser=root", "SlurmdUser=root", "AuthType=auth/munge", f"AuthInfo=socket={munge / 'munge.sock'}",
            "CredType=cred/munge", f"StateSaveLocation={d / 'state'}", f"SlurmdSpoolDir={d / 'spool'}",
            f"SlurmctldPidFile={d / 'slurmctld.pid'}", f"SlurmdPidFile={d / 'slurmd.pid'}",
            f"SlurmctldLogFile={d / 'slurmctld.log'}", f"SlurmdLogFile={d / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none", "SwitchType=switch/none", "MpiDefault=none",
            "SchedulerType=sched/builtin", "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core",
            "ReturnToService=2",
            f"NodeName={node} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory=1000 State=UNKNOWN",
            f"PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP", ""]))
        self.env["SLURM_CONF"] = str(conf)
        self._start(["slurmctld", "-D", "-c", "-f", str(conf)], "slurmctld.out")
        self._start(["slurmd", "-D", "-f", str(conf)], "slurmd.out")

        def idle() -> bool:
            out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, env=self.env).stdout
            return "idle" in out.split()

        wait_for(idle, "slurm node")
        return conf

    def start_sshd(self, slurm_conf: Path | None = None) -> dict:
        """An sshd on a free loopback port with a throwaway key; returns how to reach it."""
        d = self.root / "ssh"
        d.mkdir()
        for key in ("id", "hostkey"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / key)], check=True)
        (d / "authorized_keys").write_text((d / "id.pub").read_text())
        Path("/run/sshd").mkdir(exist_ok=True)
        port = free_port()
        config = [f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {d / 'hostkey'}", f"PidFile {d / 'sshd.pid'}",
                  f"AuthorizedKeysFile {d / 'authorized_keys'}", "PermitRootLogin prohibit-password",
                  "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UsePAM no",
                  "StrictModes no", "Subsystem sftp internal-sftp"]
        if slurm_conf:
            config.append(f"SetEnv SLURM_CONF={slurm_conf}")
        (d / "sshd_config").write_text("\n".join(config) + "\n")
        self._start(["/usr/sbin/sshd", "-D", "-f", str(d / "sshd_config"), "-E", str(d / "sshd.log")], "sshd.out")
        wait_for(lambda: _port_open(port), "sshd")
        return {"host": "127.0.0.1", "port": port, "user": os.environ.get("USER") or "root", "key": str(d / "id")}

    def stop(self) -> None:
        if "SLURM_CONF" in self.env:
            subprocess.run(["scontrol", "shutdown"], env=self.env, capture_output=True, timeout=20)
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()


# ---------------------------------------------------------------- generation probe
# crygen's generation in a process of its own (its peak memory its own): model dir, NUM_GEN,
# batch size -> JSON; used by the memory-budget test and benchmarks/.
GENERATION_PROBE = """
import json, resource, sys
from pathlib import Path
from crygen.generation import generate
r = generate(Path(sys.argv[1]), int(sys.argv[2]), seed=int(sys.argv[4]), batch_size=int(sys.argv[3]),
             record_trajectories=False, log=lambda m: None)
print(json.dumps({"n": len(r.structures), "atoms": sum(len(s) for s in r.structures), "seconds": r.seconds,
                  "failed_batches": r.failed_batches,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run_generation_probe(model_dir: Path, num_gen: int, batch: int, env: dict | None = None, seed: int = 0) -> dict:
    """crygen's generation of ``num_gen`` crystals in batches of ``batch`` from ``seed``, in a process
    of its own: crystals and atoms written, sampling seconds, failed batches, peak RSS."""
    proc = subprocess.run([sys.executable, "-c", GENERATION_PROBE, str(model_dir), str(num_gen), str(batch), str(seed)],
                          check=True, capture_output=True, text=True, cwd=ROOT, env=env)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def counting_torch_load(monkeypatch) -> list[str]:
    """Every torch.load from now on, counted (the paths it read)."""
    import torch

    calls: list[str] = []
    real = torch.load

    def counting(f, *args, **kwargs):
        calls.append(str(f))
        return real(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting)
    return calls


# ---------------------------------------------------------------- make remote, as the remote tests drive it
# Fake credentials, made per run (so that no source file travelling with a job holds them):
# the tests look for them in every file under the job folders and in every output.
FAKE_SECRETS = {"BOHRIUM_PASSWORD": f"pw-{uuid.uuid4().hex}", "BOHRIUM_ACCESS_KEY": f"ak-{uuid.uuid4().hex}"}
FAKE_ACCOUNT = {"BOHRIUM_EMAIL": "crygen-test@example.org", "BOHRIUM_PROGRAM_ID": "12345", "BOHRIUM_PROJECT_ID": "12345"}
IMAGE = "registry.example.org/crygen/crygen:test"


def make_remote(tmp_path: Path, *args: str, env: dict | None = None, timeout: int = 1500) -> subprocess.CompletedProcess:
    """`make <args>` in the project, with this test's own job and scratch folders."""
    base = {k: v for k, v in os.environ.items() if k not in FAKE_SECRETS}
    full_env = {**base, "CRYGEN_REMOTE_JOBS": str(tmp_path / "jobs"), "CRYGEN_SCRATCH": str(tmp_path / "scratch"),
                **(env or {})}
    return subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout)


def only_job(tmp_path: Path) -> tuple[Path, dict]:
    jobs = sorted((tmp_path / "jobs").iterdir())
    assert len(jobs) >= 1, "no job folder written"
    return jobs[-1], json.loads((jobs[-1] / "job.json").read_text())


def assert_ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


def assert_no_secret(tmp_path: Path, *outputs: str) -> None:
    leaks = []
    for path in [*(tmp_path / "jobs").rglob("*"), *(tmp_path / "scratch").rglob("*")]:
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            leaks += [f"{path}: {name}" for name, value in FAKE_SECRETS.items() if value.encode() in data]
    leaks += [f"output: {name}" for name, value in FAKE_SECRETS.items() for out in outputs if value in out]
    assert not leaks, leaks


def ssh_env(ssh: dict, root: Path) -> dict:
    return {"CRYGEN_SSH_HOST": ssh["host"], "CRYGEN_SSH_PORT": str(ssh["port"]), "CRYGEN_SSH_USER": ssh["user"],
            "CRYGEN_SSH_KEY": ssh["key"], "CRYGEN_REMOTE_ROOT": str(root), "CRYGEN_REMOTE_VENV": str(ROOT / ".venv"),
            "CRYGEN_SLURM_PARTITION": "debug", "CRYGEN_SLURM_CPUS": "1", "CRYGEN_SLURM_GPUS": "0",
            "CRYGEN_CHECK_INTERVAL": "2"}


# ---------------------------------------------------------------- without the compiled ops
# The head of a script for a fresh process: with HIDE_COMPILED_OPS=1 in its environment,
# torch_scatter and torch_sparse cannot be found (as where they are not installed), so
# crygen's provided modules serve MatterGen; used by tests/test_torch_ops.py and benchmarks/.
WITHOUT_COMPILED_OPS = """
import importlib.machinery, os, sys

class WithoutCompiledOps(importlib.machinery.PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if os.environ.get("HIDE_COMPILED_OPS") == "1" and name.split(".")[0] in ("torch_scatter", "torch_sparse"):
            return None
        return importlib.machinery.PathFinder.find_spec(name, path, target)

sys.meta_path = [WithoutCompiledOps if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
"""
