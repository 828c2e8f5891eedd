"""The local job queue with real processes: GPUs never double-booked, CPU slots, priority, cancel, persistence.

Each job script records when it started and ended (and its CUDA_VISIBLE_DEVICES) into a file of its own, so the
tests judge what really ran at the same time, not what the store says.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

import workbench as wb
from workbench.backends.local import queue
from workbench.backends.local.processes import wait_for
from workbench.store import JobStore

RECORDER = """
import json, os, pathlib, sys, time
out = pathlib.Path(sys.argv[1])
start = time.time()
hold = float(sys.argv[2])
gate = pathlib.Path(sys.argv[3]) if len(sys.argv) > 3 else None
while time.time() - start < hold or (gate is not None and not gate.exists()):
    time.sleep(0.02)
out.write_text(json.dumps({"start": start, "end": time.time(), "gpus": os.environ["CUDA_VISIBLE_DEVICES"]}))
"""


@pytest.fixture
def recorder(write_script, tmp_path: Path):
    script = write_script(RECORDER, name="record.py", folder="recorder")
    marks = tmp_path / "marks"
    marks.mkdir()

    def submit(label: str, hold: float = 0.5, gate: Path | None = None, **options) -> wb.Job:
        args = [str(marks / f"{label}.json"), str(hold), *([str(gate)] if gate else [])]
        return wb.submit(str(script), args=args, framework="none", name=label, **options)

    submit.marks = marks  # type: ignore[attr-defined]
    return submit


def intervals(marks: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in marks.glob("*.json")}


def most_at_once(spans: list[dict]) -> int:
    edges = sorted([(s["start"], 1) for s in spans] + [(s["end"], -1) for s in spans])
    now = peak = 0
    for _, delta in edges:
        now += delta
        peak = max(peak, now)
    return peak


def test_one_gpu_two_jobs_run_one_after_the_other(workspace, recorder, monkeypatch):
    monkeypatch.setenv("WORKBENCH_GPUS", "1")
    first = recorder("first", hold=2.0, gpus=1)
    second = recorder("second", hold=0.2, gpus=1)
    assert wait_for(lambda: first.status() == "running", 30)
    assert second.status() == "queued" and second.queue_position() == 1
    assert queue.positions(second.workspace) == {second.id: 1}
    assert second.wait(60) == "succeeded" and first.wait(5) == "succeeded"
    spans = intervals(recorder.marks)
    assert spans["first"]["gpus"] == spans["second"]["gpus"] == "0"
    assert spans["second"]["start"] >= spans["first"]["end"], spans
    assert spans["second"]["start"] - spans["first"]["end"] < 1.0, spans


def test_gpus_are_split_disjoint_among_running_jobs(workspace, recorder, monkeypatch):
    monkeypatch.setenv("WORKBENCH_GPUS", "3")
    monkeypatch.setenv("WORKBENCH_CPU_SLOTS", "8")
    jobs = [recorder(f"g{i}", hold=1.5, gpus=1) for i in range(4)]
    for job in jobs:
        assert job.wait(60) == "succeeded"
    spans = intervals(recorder.marks)
    first_three = sorted(spans[f"g{i}"]["gpus"] for i in range(3))
    assert first_three == ["0", "1", "2"]  # three at once, each on its own GPU
    assert spans["g3"]["start"] >= min(spans[f"g{i}"]["end"] for i in range(3))


def test_cpu_slots_bound_what_runs_at_once(workspace, recorder, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CPU_SLOTS", "2")
    jobs = [recorder(f"c{i}", hold=1.0) for i in range(6)]
    assert wait_for(lambda: sum(j.status() == "queued" for j in jobs) == 4, 10)
    for job in jobs:
        assert job.wait(90) == "succeeded", job.message
    spans = list(intervals(recorder.marks).values())
    assert len(spans) == 6
    assert most_at_once(spans) == 2  # the limit holds, and is used


def test_a_job_costs_its_replicas_or_its_cpus_option(workspace, recorder, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CPU_SLOTS", "2")
    wide = recorder("wide", hold=1.5, cpus=2)
    narrow = recorder("narrow", hold=0.2)
    assert wait_for(lambda: wide.status() == "running", 30)
    assert narrow.status() == "queued"
    assert narrow.wait(60) == "succeeded"
    spans = intervals(recorder.marks)
    assert spans["narrow"]["start"] >= spans["wide"]["end"]


def test_priority_then_first_come_first_served(workspace, recorder, monkeypatch, tmp_path):
    monkeypatch.setenv("WORKBENCH_MAX_JOBS", "1")
    gate = tmp_path / "open"
    blocker = recorder("blocker", hold=0, gate=gate)
    low_a = recorder("low_a", hold=0.1)
    low_b = recorder("low_b", hold=0.1)
    high = recorder("high", hold=0.1, priority=5)
    assert wait_for(lambda: blocker.status() == "running", 30)
    assert queue.positions(blocker.workspace) == {high.id: 1, low_a.id: 2, low_b.id: 3}
    assert all(j.status() == "queued" for j in (low_a, low_b, high))
    gate.touch()
    for job in (blocker, low_a, low_b, high):
        assert job.wait(60) == "succeeded"
    spans = intervals(recorder.marks)
    order = sorted(spans, key=lambda k: spans[k]["start"])
    assert order == ["blocker", "high", "low_a", "low_b"]


def test_a_cancelled_queued_job_never_starts(workspace, recorder, monkeypatch, tmp_path):
    monkeypatch.setenv("WORKBENCH_MAX_JOBS", "1")
    gate = tmp_path / "open"
    blocker = recorder("blocker", hold=0, gate=gate)
    doomed = recorder("doomed", hold=0.1)
    after = recorder("after", hold=0.1)
    assert wait_for(lambda: blocker.status() == "running", 30)
    assert doomed.cancel() == "cancelled"
    assert "never started" in (doomed.message or "")
    assert queue.positions(blocker.workspace) == {after.id: 1}
    gate.touch()
    assert after.wait(60) == "succeeded"
    assert doomed.status() == "cancelled"
    assert set(intervals(recorder.marks)) == {"blocker", "after"}
    assert not (doomed.paths.root / "replicas.json").exists()


def workbench_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "workbench", *args], capture_output=True, text=True, timeout=120, env=os.environ.copy()
    )


def test_the_queue_lives_in_the_store_not_in_a_process(workspace, recorder, monkeypatch, tmp_path):
    """Its submitter gone and the launcher that would have let it in killed, a queued job starts at the next look
    from a fresh process."""
    monkeypatch.setenv("WORKBENCH_MAX_JOBS", "1")
    blocker = recorder("blocker", hold=600)
    waiting = recorder("waiting", hold=0.1)
    assert wait_for(lambda: blocker.record.supervisor_pid is not None, 30)
    listing = workbench_cli("jobs")
    assert listing.returncode == 0, listing.stderr
    line = next(ln for ln in listing.stdout.splitlines() if ln.startswith(waiting.id))
    assert "queued #1" in line
    # Nothing runs now that could let `waiting` in: neither the blocker's launcher nor the one waiting for it.
    assert wait_for(lambda: json.loads(waiting.paths.run_json.read_text()).get("supervisor_pid"), 30)
    psutil.Process(json.loads(waiting.paths.run_json.read_text())["supervisor_pid"]).kill()
    psutil.Process(blocker.record.supervisor_pid).kill()
    assert waiting.status() == "queued"  # a dead waiting launcher fails nothing
    status = workbench_cli("status")  # a fresh process: settles the dead job, lets the next one in
    assert status.returncode == 0, status.stderr
    assert wb.job(blocker.id).status() == "failed"
    assert waiting.wait(60) == "succeeded"


def test_the_head_of_the_queue_moves_on_by_itself_when_every_launcher_died(workspace, recorder, monkeypatch):
    monkeypatch.setenv("WORKBENCH_MAX_JOBS", "1")
    blocker = recorder("blocker", hold=600)
    head = recorder("head", hold=0.1)
    assert head.queue_position() == 1
    assert wait_for(lambda: blocker.record.supervisor_pid is not None, 30)
    psutil.Process(blocker.record.supervisor_pid).kill()
    # Nobody lists or asks: the head's waiting launcher notices within a few seconds.
    assert wait_for(lambda: (recorder.marks / "head.json").exists(), 30)
    assert JobStore(blocker.workspace).get(blocker.id).state == "failed"


def test_a_job_started_before_the_queue_existed_still_holds_its_gpu(workspace, recorder, monkeypatch, tmp_path):
    """An upgrade in the middle of a running job: its run.json has no allocation, and it is still not run twice
    nor double-booked."""
    monkeypatch.setenv("WORKBENCH_GPUS", "1")
    gate = tmp_path / "open"
    old = recorder("old", hold=0, gate=gate, gpus=1)
    assert wait_for(lambda: old.status() == "running", 30)
    run = json.loads(old.paths.run_json.read_text())
    del run["queue"]
    old.paths.run_json.write_text(json.dumps(run))
    new = recorder("new", hold=0.1, gpus=1)
    assert new.status() == "queued" and new.queue_position() == 1
    assert old.queue_position() is None
    gate.touch()
    assert new.wait(60) == "succeeded" and old.wait(10) == "succeeded"
    spans = intervals(recorder.marks)
    assert spans["new"]["start"] >= spans["old"]["end"]
    assert len(json.loads((old.paths.root / "replicas.json").read_text())) == 1
