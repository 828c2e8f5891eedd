"""The job store never takes jobs down: a corrupt, truncated or unusable database while jobs run, a supervisor
killed with kill -9, and state files readable by their owner only. Real supervisors and replicas."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

import workbench as wb
from workbench.backends.local.processes import alive, wait_for

# Each replica waits for the test to say "go" (a file), so the fault surely hits while both jobs run.
GATED = """
import os, pathlib, time
pathlib.Path(os.environ["WORKBENCH_CHECKPOINT_DIR"], "started").write_text("yes")
go = pathlib.Path({go!r})
deadline = time.monotonic() + 120
while not go.exists() and time.monotonic() < deadline:
    time.sleep(0.05)
print("finished", go.exists(), flush=True)
"""


def start_two(write_script, tmp_path: Path) -> tuple[list[wb.Job], Path]:
    go = tmp_path / "go"
    script = write_script(GATED.format(go=str(go)))
    jobs = [wb.submit(str(script), framework="none", name=f"gated-{i}") for i in range(2)]
    for job in jobs:
        assert wait_for(lambda j=job: (j.paths.checkpoints / "started").exists(), 60), job.logs()
    return jobs, go


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "workbench", *args], capture_output=True, text=True, timeout=60)


def run_states(jobs: list[wb.Job]) -> list[str]:
    return [json.loads(j.paths.run_json.read_text())["state"] for j in jobs]


@pytest.mark.parametrize("fault", ["garbage over the header", "truncated to nothing", "truncated to half"])
def test_a_corrupt_job_database_while_two_jobs_run(workspace, write_script, tmp_path, fault):
    jobs, go = start_two(write_script, tmp_path)
    db = workspace / "state" / "jobs.sqlite"
    if fault == "garbage over the header":
        with open(db, "r+b") as f:
            f.write(os.urandom(100))
    else:
        with open(db, "r+b") as f:
            f.truncate(0 if fault == "truncated to nothing" else db.stat().st_size // 2)
        for suffix in ("-wal", "-shm"):  # what a copy or a crash leaves: the main file alone
            Path(f"{db}{suffix}").unlink(missing_ok=True)
    # the supervisors poll the database every 0.2 s: the first to meet the fault repairs it and says so
    said = lambda: any("job database" in j.paths.supervisor_log.read_text() for j in jobs)  # noqa: E731
    assert wait_for(said, 10), [j.paths.supervisor_log.read_text() for j in jobs]
    go.write_text("go")
    assert all(wait_for(lambda j=j: run_states([j]) == ["succeeded"], 60) for j in jobs), [j.logs() for j in jobs]
    out = cli("jobs")
    assert out.returncode == 0, out.stderr
    listed = [line.split()[:2] for line in out.stdout.splitlines()[1:]]
    assert sorted(listed) == sorted([j.id, "succeeded"] for j in jobs), out.stdout
    assert all("finished True" in j.logs() for j in jobs)


def test_an_unusable_job_database_leaves_jobs_running_and_is_reconciled(workspace, write_script, tmp_path):
    jobs, go = start_two(write_script, tmp_path)
    db = workspace / "state" / "jobs.sqlite"
    aside = tmp_path / "jobs.sqlite.saved"
    for suffix in ("", "-wal", "-shm"):
        if Path(f"{db}{suffix}").exists():
            shutil.move(f"{db}{suffix}", f"{aside}{suffix}")
    db.mkdir()  # the path is a folder now: "unable to open database file", not corruption
    try:
        out = cli("jobs")
        assert out.returncode == 2 and "job database" in out.stderr, out  # an error, never an empty list
        go.write_text("go")
        assert all(wait_for(lambda j=j: run_states([j]) == ["succeeded"], 60) for j in jobs)
        assert all(alive(json.loads(j.paths.run_json.read_text())["supervisor_pid"]) for j in jobs)  # retrying
    finally:
        db.rmdir()
        for suffix in ("", "-wal", "-shm"):
            if Path(f"{aside}{suffix}").exists():
                shutil.move(f"{aside}{suffix}", f"{db}{suffix}")
    assert [j.status() for j in jobs] == ["succeeded", "succeeded"]
    assert wait_for(
        lambda: not any(alive(json.loads(j.paths.run_json.read_text())["supervisor_pid"]) for j in jobs), 90
    )


CHILDISH = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])  # the job's script: lives on
print("child", child.pid, flush=True)
time.sleep(600)  # the job's script: runs until it is killed
"""


def test_a_killed_supervisor_is_noticed_and_its_replicas_are_gone(workspace, write_script):
    job = wb.submit(str(write_script(CHILDISH)), framework="none", workers=2)
    assert wait_for(lambda: (job.paths.root / "replicas.json").exists(), 30)
    replicas = [r["pid"] for r in json.loads((job.paths.root / "replicas.json").read_text())]
    assert wait_for(lambda: job.logs().count("child ") == 2, 30)
    children = [int(line.split()[-1]) for line in job.logs().splitlines() if "child " in line]
    supervisor = json.loads(job.paths.run_json.read_text())["supervisor_pid"]
    psutil.Process(supervisor).kill()
    # the replicas die with their supervisor (parent-death signal), before anyone looks
    assert wait_for(lambda: not any(alive(p) for p in replicas), 5), "a replica outlived its supervisor"
    listed = {j.id: j.record for j in wb.jobs()}  # a listing notices, without a status() call
    assert listed[job.id].state == "failed" and "launcher process died" in (listed[job.id].message or "")
    assert wait_for(lambda: not any(alive(p) for p in children), 10), "a replica's child outlived the job"
    assert json.loads(job.paths.run_json.read_text())["state"] == "failed"


def test_state_files_are_private(workspace, write_script):
    job = wb.submit(str(write_script("print(1)\n")), framework="none", env={"API_KEY": "s3cr3t"})
    assert job.wait(60) == "succeeded"
    state = workspace / "state"
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    files = [p for p in state.rglob("*") if p.is_file()]
    assert any(p.name == "jobs.sqlite" for p in files)
    for p in files:
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    for p in job.paths.logs.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
