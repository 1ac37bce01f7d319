"""The evaluation's relaxation in parts (crygen/evaluation/shards.py): SHARDS=2 equals SHARDS=1,
and an interrupted relaxation resumes with only the parts it lacks."""

from __future__ import annotations

import json

import pytest

from tests.helpers import demo_structures, error_line, run_stage

# 5 structures in parts of 2: parts 0 and 2 are share 1/2's, part 1 share 2/2's, the last one short
RELAX = ("--max-steps", "20", "--threads", "1", "--part-size", "2")
COMPARED = ("per_structure.csv", "relaxed_structures.extxyz", "metrics.json")


@pytest.fixture(scope="module")
def cifs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shards") / "cifs"
    folder.mkdir()
    for i, s in enumerate(demo_structures(5, start=52)):
        s.scale_lattice(s.volume * 0.95)
        s.to(filename=str(folder / f"g{i}.cif"))
    return folder


@pytest.fixture(scope="module")
def one_process(cifs):
    """The evaluation relaxed in this process (SHARDS=1): what every other run must equal."""
    out = cifs.parent / "one"
    run_stage("evaluate_generated", "--results", cifs, "--out", out, "--shards", "1", *RELAX)
    return out


def summary(out):
    return json.loads((out / "metrics_summary.json").read_text())


def assert_same_evaluation(out, expected):
    for name in COMPARED:
        assert (out / name).read_bytes() == (expected / name).read_bytes(), name
    mine, theirs = summary(out), summary(expected)
    assert mine.pop("relaxation_parts")["key"] == theirs.pop("relaxation_parts")["key"]
    assert mine == theirs


def test_two_shards_equal_one_process(cifs, one_process):
    out = cifs.parent / "two"
    proc = run_stage("evaluate_generated", "--results", cifs, "--out", out, "--shards", "2", *RELAX)
    assert "3 of 3 parts of 2 to do in 2 processes of 1 thread(s)" in proc.stderr
    assert_same_evaluation(out, one_process)
    parts = summary(out)["relaxation_parts"]
    assert parts["size"] == 2 and [p["index"] for p in parts["parts"]] == [0, 1, 2]
    # the shards took the parts as they went: which took which is a race, each part ran in one of them
    assert {p["shard"] for p in parts["parts"]} <= {"1/2", "2/2"}
    assert len({(p["shard"], p["pid"]) for p in parts["parts"]}) == len({p["pid"] for p in parts["parts"]})
    assert all(p["threads"] == 1 and p["device"] == "cpu" and p["seconds"] > 0 and p["host"] for p in parts["parts"])
    single = summary(one_process)["relaxation_parts"]["parts"]
    assert [p["shard"] for p in single] == ["1/1"] * 3


def test_a_killed_shard_is_one_line_keeps_finished_parts_and_a_rerun_relaxes_only_the_rest(cifs, one_process):
    out = cifs.parent / "killed"
    # each shard dies after its first part as if killed: parts 0 and 1 are done, by one shard each
    proc = run_stage("evaluate_generated", "--results", cifs, "--out", out, "--shards", "2", *RELAX,
                     env={"CRYGEN_TEST_STOP_AFTER_PARTS": "1"}, check=False)
    assert proc.returncode == 2
    line = error_line(proc)
    folder = out / "relaxation-parts" / summary(one_process)["relaxation_parts"]["key"]
    log = folder / "relaxation-shard-1.log"
    assert line.startswith(f"evaluate_generated: error: {log}: relaxation shard 1/2 failed (exit 9: ")
    assert "what the shards finished is kept" in line and "\n" not in line
    assert sorted(p.name for p in folder.glob("*.json.gz")) == ["part-000000.json.gz", "part-000001.json.gz"]
    assert not (out / "metrics_summary.json").exists()
    finished = {p.name: p.read_bytes() for p in folder.glob("*.json.gz")}

    # the rerun (in one process: parts do not depend on which process ran them) does part 2 alone
    proc = run_stage("evaluate_generated", "--results", cifs, "--out", out, "--shards", "1", *RELAX)
    assert "1 of 3 parts of 2 to do on 1 thread(s)" in proc.stderr
    assert all((folder / name).read_bytes() == data for name, data in finished.items())
    shards = [p["shard"] for p in summary(out)["relaxation_parts"]["parts"]]
    assert sorted(shards[:2]) == ["1/2", "2/2"] and shards[2] == "1/1"
    assert_same_evaluation(out, one_process)
