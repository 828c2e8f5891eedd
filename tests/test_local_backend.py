"""The local backend with real processes: detached jobs, gang semantics, cancel, restarts, GPUs, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

import workbench as wb
from workbench.backends.local.processes import alive, wait_for
from workbench.errors import ResourceError, SpecError, WorkspaceError

SLEEPER = """
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])  # the job's script: lives on
print("child", child.pid, flush=True)
print("visible", repr(os.environ.get("CUDA_VISIBLE_DEVICES")), flush=True)
time.sleep(600)  # the job's script: runs until it is cancelled
"""


def replica_pids(job: wb.Job) -> list[int]:
    path = job.paths.root / "replicas.json"
    assert wait_for(path.exists, 30), "launcher never started replicas"
    return [r["pid"] for r in json.loads(path.read_text())]


def test_single_job_runs_and_records_everything(workspace, write_script):
    script = write_script(
        """
        import os, pathlib
        print("run", os.environ["WORKBENCH_RUN_ID"])
        ckpt = pathlib.Path(os.environ["WORKBENCH_CHECKPOINT_DIR"])
        (ckpt / "ckpt-0003.txt").write_text("weights")
        print("args", __import__("sys").argv[1:])
        """
    )
    (script.parent / "helper.txt").write_text("data")
    job = wb.submit(str(script), args=["--x", "1"], framework="none", name="tiny")
    assert job.wait(60) == "succeeded", job.logs()
    logs = job.logs()
    assert f"run {job.id}" in logs and "args ['--x', '1']" in logs
    run = json.loads(job.paths.run_json.read_text())
    assert run["state"] == "succeeded" and run["spec"]["name"] == "tiny"
    assert run["spec"]["args"] == ["--x", "1"] and run["params"] == {}
    assert run["lineage"]["script_sha256"] and run["lineage"]["user"]
    assert run["started"] <= run["ended"]
    assert (job.paths.code / "helper.txt").read_text() == "data"
    assert [c.step for c in job.checkpoints()] == [3]


def test_code_snapshot_isolates_the_run_and_skips_gitignored(workspace, write_script):
    script = write_script("import time; time.sleep(2); print(open('data.txt').read())\n")  # job: reads after the edit
    (script.parent / "data.txt").write_text("original")
    (script.parent / ".gitignore").write_text("big/\n*.bin\n")
    (script.parent / "big").mkdir()
    (script.parent / "big" / "x").write_text("x")
    (script.parent / "w.bin").write_text("x")
    job = wb.submit(str(script), framework="none")
    (script.parent / "data.txt").write_text("edited while running")
    assert job.wait(60) == "succeeded"
    assert "original" in job.logs() and "edited" not in job.logs()
    assert not (job.paths.code / "big").exists() and not (job.paths.code / "w.bin").exists()


def test_job_outlives_the_process_that_submitted_it(workspace, write_script):
    script = write_script("import time; time.sleep(3); print('finished')\n")  # job: outlives its submitter
    out = subprocess.run(
        [sys.executable, "-c", f"import workbench as wb; print(wb.submit({str(script)!r}, framework='none').id)"],
        capture_output=True,
        text=True,
        check=True,
        env=os.environ,
    )
    job = wb.job(out.stdout.strip())
    assert job.status() in ("queued", "running")
    assert job.wait(60) == "succeeded"
    assert "finished" in job.logs()


def test_jobs_are_listed_newest_first_from_a_second_process(workspace, write_script):
    script = write_script("print('x')\n")
    first = wb.submit(str(script), framework="none", name="first")
    time.sleep(0.05)  # distinct creation times: the listing's order is the point
    second = wb.submit(str(script), framework="none", name="second")
    code = "import workbench as wb; print(' '.join(j.id for j in wb.jobs()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=os.environ)
    assert out.stdout.split() == [second.id, first.id]
    first.wait(60)
    cli = subprocess.run([sys.executable, "-m", "workbench", "jobs"], capture_output=True, text=True, env=os.environ)
    assert cli.returncode == 0 and first.id in cli.stdout and second.id in cli.stdout


def test_cancel_ends_every_replica_process_tree(workspace, write_script):
    job = wb.submit(str(write_script(SLEEPER)), framework="none", workers=2)
    assert wait_for(lambda: job.logs().count("child ") == 2, 60), job.logs()
    children = [
        int(line.split()[-1]) for line in job.logs().splitlines() if " child " in line or line.startswith("child")
    ]
    pids = replica_pids(job)
    assert all(alive(p) for p in pids + children)
    assert job.cancel() == "cancelled"
    assert job.status() == "cancelled"
    assert wait_for(lambda: not any(alive(p) for p in pids + children), 15)


def test_one_failed_replica_fails_the_job_and_stops_the_others(workspace, write_script):
    script = write_script(
        """
        import os, sys, time
        if os.environ["WORKBENCH_REPLICA_INDEX"] == "1":
            time.sleep(1)  # the job's script: replica 1 fails after a while
            sys.exit(3)
        time.sleep(600)  # the others run until they are stopped
        """
    )
    job = wb.submit(str(script), framework="none", workers=2)
    pids = replica_pids(job)
    assert job.wait(60) == "failed"
    assert "worker-1 exited with code 3" in (job.message or "")
    assert wait_for(lambda: not any(alive(p) for p in pids), 15)


def test_max_restarts_runs_the_job_again(workspace, write_script):
    script = write_script(
        """
        import os, sys
        attempt = int(os.environ["WORKBENCH_ATTEMPT"])
        print("attempt", attempt)
        sys.exit(1 if attempt == 0 else 0)
        """
    )
    job = wb.submit(str(script), framework="none", max_restarts=2)
    assert job.wait(60) == "succeeded"
    assert job.record.attempt == 1
    assert "attempt 0" in job.logs() and "attempt 1" in job.logs() and "restart 1" in job.logs()


def test_restarts_exhausted_fail_the_job(workspace, write_script):
    job = wb.submit(str(write_script("raise SystemExit(2)\n")), framework="none", max_restarts=1)
    assert job.wait(60) == "failed"
    assert job.record.attempt == 1


def test_each_replica_gets_its_own_gpus(workspace, write_script, monkeypatch):
    monkeypatch.setenv("WORKBENCH_GPUS", "4")
    job = wb.submit(str(write_script(SLEEPER)), framework="none", workers=2, gpus=2)
    assert wait_for(lambda: job.logs().count("visible") == 2, 60)
    logs = job.logs()
    job.cancel()
    assert "[worker-0] visible '0,1'" in logs and "[worker-1] visible '2,3'" in logs


def test_no_gpu_job_sees_no_gpu(workspace, write_script):
    job = wb.submit(str(write_script("import os; print(repr(os.environ['CUDA_VISIBLE_DEVICES']))\n")), framework="none")
    assert job.wait(60) == "succeeded"
    assert "''" in job.logs()


def test_follow_logs_streams_until_the_end(workspace, write_script, capsys):
    # the job's script prints a line every 0.5 s, so following sees them arrive
    script = write_script("import time\nfor i in range(4):\n    print('line', i, flush=True)\n    time.sleep(0.5)\n")
    job = wb.submit(str(script), framework="none")
    assert job.logs(follow=True) is None
    out = capsys.readouterr().out
    assert [ln for ln in out.splitlines() if ln.startswith("line")] == [f"line {i}" for i in range(4)]
    assert job.status() == "succeeded"


def test_dead_launcher_is_noticed(workspace, write_script):
    job = wb.submit(str(write_script("import time; time.sleep(600)\n")), framework="none")  # job: runs till killed
    pids = replica_pids(job)
    assert wait_for(lambda: job.record.supervisor_pid is not None, 30)
    psutil.Process(job.record.supervisor_pid).kill()
    assert wait_for(lambda: job.status() == "failed", 30)
    assert "launcher process died" in (job.message or "")
    assert wait_for(lambda: not any(alive(p) for p in pids), 15)


# --- bad input: a clear error, nothing half-created, other jobs unaffected ---------------------------


def runs(workspace: Path) -> list[str]:
    return sorted(p.name for p in (workspace / "runs").iterdir()) if (workspace / "runs").exists() else []


def test_bad_submits_create_nothing_and_leave_running_jobs_alone(workspace, write_script, monkeypatch, tmp_path):
    # a job that is still running while the bad submits are tried
    running = wb.submit(str(write_script("import time; time.sleep(4); print('done')\n")), framework="none")
    before = runs(workspace)
    good = write_script("print(1)\n", name="ok.py", folder="ok")
    with pytest.raises(SpecError, match="unknown framework"):
        wb.submit(str(good), framework="theano")
    with pytest.raises(SpecError, match="workers must be at least 1"):
        wb.submit(str(good), workers=0)
    with pytest.raises(SpecError, match="does not exist"):
        wb.submit(str(tmp_path / "missing.py"))
    monkeypatch.setenv("WORKBENCH_GPUS", "0")
    with pytest.raises(ResourceError, match="asks for 1 GPU.*this machine has 0"):
        wb.submit(str(good), gpus=1, framework="none")
    monkeypatch.setenv("WORKBENCH_CODE_MAX_MB", "0.0001")
    (good.parent / "weights.bin").write_bytes(b"0" * 2000)
    with pytest.raises(SpecError, match="over the .* snapshot cap.*weights.bin"):
        wb.submit(str(good), framework="none")
    assert runs(workspace) == before
    assert running.wait(60) == "succeeded"
    assert len(wb.jobs()) == 1


def test_unwritable_workspace(monkeypatch, tmp_path, write_script):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("WORKBENCH_WORKSPACE", str(blocker / "ws"))
    with pytest.raises(WorkspaceError, match="is not writable.*WORKBENCH_WORKSPACE"):
        wb.submit(str(write_script("print(1)\n")), framework="none")


def test_corrupt_job_database_is_moved_aside_and_rebuilt(workspace, write_script, capsys):
    (workspace / "state").mkdir(parents=True)
    (workspace / "state" / "jobs.sqlite").write_bytes(b"this is not a database" * 100)
    job = wb.submit(str(write_script("print(1)\n")), framework="none")
    assert "was corrupt" in capsys.readouterr().err
    assert [p.name for p in (workspace / "state").glob("jobs.sqlite.corrupt-*")]
    assert job.wait(60) == "succeeded"
    assert [j.id for j in wb.jobs()] == [job.id]


def test_unknown_job_id(workspace):
    with pytest.raises(wb.JobNotFound, match="no job 'nope'"):
        wb.job("nope")


def test_cli_reports_errors_without_traceback(workspace, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "workbench", "submit", str(tmp_path / "missing.py")],
        capture_output=True,
        text=True,
        env=os.environ,
    )
    assert out.returncode == 2
    assert out.stderr.startswith("error: training script") and "Traceback" not in out.stderr


def test_cli_submit_takes_options_before_or_after_the_script(workspace, write_script):
    script = write_script("import sys; print('got', sys.argv[1:])\n")
    for argv in (
        [str(script), "--framework", "none", "--name", "after", "--", "--epochs", "3"],
        ["--framework", "none", "--name", "before", str(script), "--", "--epochs", "3"],
    ):
        out = subprocess.run(
            [sys.executable, "-m", "workbench", "submit", "--follow", *argv],
            capture_output=True,
            text=True,
            env=os.environ,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        assert "got ['--epochs', '3']" in out.stdout
    assert sorted(j.name for j in wb.jobs()) == ["after", "before"]


def test_tensorflow_logs_are_quiet_unless_the_user_says_otherwise(workspace, write_script, monkeypatch):
    script = str(write_script("import os; print('level', os.environ['TF_CPP_MIN_LOG_LEVEL'])\n"))
    quiet = wb.submit(script, framework="none")
    chosen = wb.submit(script, framework="none", env={"TF_CPP_MIN_LOG_LEVEL": "0"})
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "1")
    inherited = wb.submit(script, framework="none")
    for job, level in ((quiet, "2"), (chosen, "0"), (inherited, "1")):
        assert job.wait(60) == "succeeded"
        assert f"level {level}" in job.logs()
