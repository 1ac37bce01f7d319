"""Test helpers and paths to test data (one module, reached by Path constants)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ROOT / "stages"
DEMO_DATA = ROOT / "data" / "alexandria" / "alexandria-random-1k.xyz"
BASE_MODEL = ROOT / "data" / "base_model"
TEST_FILES = ROOT / "tests" / "files"

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


def run_stage(name: str, *args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``stages/<name>.py`` as a user would, in a subprocess."""
    proc = subprocess.run(
        [sys.executable, str(STAGES / f"{name}.py"), *map(str, args)],
        capture_output=True, text=True, env={**os.environ, **(env or {})},
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The last non-empty stderr line: where a stage states its one-line error."""
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    return lines[-1] if lines else ""


# ---------------------------------------------------------------- real daemons on loopback
# Each runs in the foreground under its own Popen, so it is stopped by its own PID.
# CI (.ci/run) installs them and sets CRYGEN_REQUIRE_DAEMONS=1: a missing one then fails
# instead of skipping.


def require_programs(*names: str) -> None:
    import shutil

    import pytest

    missing = [n for n in names if not shutil.which(n, path=os.environ["PATH"] + ":/usr/sbin")]
    if missing:
        message = f"not installed: {', '.join(missing)} (apt-get install openssh-server slurmctld slurmd slurm-client munge)"
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
