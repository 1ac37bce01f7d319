"""crygen/generation_blocks.py, crygen/shards.py and stages/generate.py --shards: generation in
blocks written as they finish, resumed after a kill, extended, and spread over processes.

Crystals are compared with THREADS fixed: MatterGen's sampler draws others on other thread counts."""

from __future__ import annotations

import gzip
import json
import re
import signal
import subprocess
import sys
import time
import zipfile

import pytest

from crygen.fileio import CrygenError
from tests.helpers import STAGES, error_line, run_stage, subprocess_env


def _generate(model, folder, num_gen, *extra):
    return run_stage("generate", "--model", model, "--out", folder / "results", "--num-gen", num_gen,
                     "--batch-size", 2, "--seed", 13, "--threads", 1, *extra)


def _crystals(folder) -> dict[str, bytes]:
    """What a generation wrote, less its timings: the structures, CIFs and trajectories."""
    results = folder / "results"
    out = {"extxyz": (results / "generated_crystals.extxyz").read_bytes()}
    for name in ("generated_crystals_cif.zip", "generated_trajectories.zip"):
        with zipfile.ZipFile(results / name) as zf:
            out.update({f"{name}/{n}": zf.read(n) for n in zf.namelist()})
    samples = json.loads((results / "generation.json").read_text())["samples"]
    return {**out, "samples": json.dumps(samples).encode()}


def _blocks(folder) -> dict[str, tuple[int, int]]:
    """Each block file: (inode, mtime in ns), which a block drawn again would change."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (folder / "blocks").glob("*/block-*")}


def test_two_shards_draw_the_crystals_one_process_draws(tmp_path, fast_base_model):
    _generate(fast_base_model, tmp_path / "one", 6)
    proc = _generate(fast_base_model, tmp_path / "two", 6, "--shards", 2)
    assert "in 2 processes of 1 thread(s)" in proc.stderr
    assert _crystals(tmp_path / "one") == _crystals(tmp_path / "two")
    blocks = json.loads((tmp_path / "two" / "results" / "generation.json").read_text())["blocks"]
    assert [b["block"] for b in blocks["blocks"]] == [1, 2, 3] and blocks["size"] == 2
    # drawn by the shards, each block once (which drew which is a race: they take blocks as they go)
    drawn = [re.search(r"share \d/2: (\d+) blocks", log.read_text())[1]
             for log in (tmp_path / "two" / "blocks").glob("generate-shard-*.log")]
    assert len(drawn) == 2 and sum(map(int, drawn)) == 3 and len({b["pid"] for b in blocks["blocks"]}) <= 2
    assert all(len(b["seeds"]) == 1 and b["threads"] == 1 for b in blocks["blocks"])


def test_a_killed_generation_resumes_without_redrawing_finished_blocks(tmp_path, fast_base_model):
    _generate(fast_base_model, tmp_path / "whole", 8)
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(STAGES / "generate.py"), "--model", str(fast_base_model),
                             "--out", str(killed / "results"), "--num-gen", "8", "--batch-size", "2", "--seed", "13",
                             "--threads", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=subprocess_env())
    deadline = time.time() + 300
    while not _blocks(killed) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _blocks(killed)
    assert 1 <= len(before) < 4, before  # killed between its first and its last block
    assert not (killed / "results").exists()  # nothing that looks finished
    rerun = _generate(fast_base_model, killed, 8)
    assert f"{len(before)} of 4 blocks already drawn" in rerun.stderr
    after = _blocks(killed)
    assert {k: after[k] for k in before} == before  # the finished blocks were read, not drawn again
    assert _crystals(killed) == _crystals(tmp_path / "whole")


def test_a_larger_num_gen_keeps_the_blocks_drawn(tmp_path, fast_base_model):
    _generate(fast_base_model, tmp_path / "small", 4)
    before = _blocks(tmp_path / "small")
    proc = _generate(fast_base_model, tmp_path / "small", 6)
    assert "2 of 3 blocks already drawn" in proc.stderr
    assert {k: v for k, v in _blocks(tmp_path / "small").items() if k in before} == before
    _generate(fast_base_model, tmp_path / "large", 6)
    assert _crystals(tmp_path / "small") == _crystals(tmp_path / "large")


def test_blocks_of_other_settings_are_not_mixed_in(tmp_path, fast_base_model):
    _generate(fast_base_model, tmp_path, 2)
    _generate(fast_base_model, tmp_path, 2, "--seed", 14)
    folders = sorted(p.name for p in (tmp_path / "blocks").iterdir())
    assert len(folders) == 2  # one per seed: a block names everything its crystals depend on
    record = json.loads(gzip.decompress(next((tmp_path / "blocks" / folders[0]).glob("block-*")).read_bytes()))
    assert record["ran_on"]["threads"] == 1 and record["drawn"] == 2


def test_a_damaged_block_is_a_one_line_error_naming_it(tmp_path, fast_base_model):
    _generate(fast_base_model, tmp_path, 2)
    block = next((tmp_path / "blocks").glob("*/block-*"))
    block.write_bytes(b"not gzip")
    proc = run_stage("generate", "--model", fast_base_model, "--out", tmp_path / "results", "--num-gen", 2,
                     "--batch-size", 2, "--seed", 13, "--threads", 1, check=False)
    assert proc.returncode == 2
    assert str(block) in error_line(proc) and "unreadable generation block" in error_line(proc)
    assert "delete it to redo it" in error_line(proc)


def test_a_failing_shard_is_named_in_one_line_and_the_others_finish(tmp_path):
    from crygen.shards import run_shards

    done = tmp_path / "done"

    def command(k):
        if k == 2:
            return [sys.executable, "-c", "import sys; print('a first line'); sys.exit('shard two broke')"]
        return [sys.executable, "-c", f"open({str(done)!r}, 'w').write('1')"]

    with pytest.raises(CrygenError) as caught:
        run_shards(command, 3, tmp_path / "logs", "generate", 1)
    message = str(caught.value)
    assert "\n" not in message and "generate shard 2/3 failed (exit 1: shard two broke)" in message
    assert str(tmp_path / "logs" / "generate-shard-2.log") in message
    assert done.read_text() == "1"  # the other shards ran to the end


@pytest.mark.parametrize("gpus, expected", [(0, ["cuda"] * 3), (1, ["cuda"] * 3), (2, ["cuda:0", "cuda:1", "cuda:0"])])
def test_shards_take_the_visible_gpus_in_turn(monkeypatch, gpus, expected):
    """DEVICE=cuda with SHARDS=3: one process per GPU in turn where there are several, else the
    device as given (the GPU runs of a shard: tests/test_cuda.py, on a machine that has one)."""
    import torch

    from crygen.cli import shard_device

    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    assert [shard_device("cuda", k) for k in (1, 2, 3)] == expected
    assert shard_device("cpu", 2) == "cpu"
