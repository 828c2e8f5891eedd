"""The Kubernetes backend's submit, status, logs and cancel, driven through the real ``kubernetes`` client
against a FAKE API server (tests/k8s/fake_apiserver.py: real HTTP on 127.0.0.1, no cluster behind it).
The tests play the Job controller and the kubelet; the backend only sees the API. Also the pod
entrypoint, run as a real process with the environment a kubelet would give it."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

import workbench as wb
from tests.k8s.fake_apiserver import FakeApiServer, container_env, pod_from_job, write_kubeconfig
from workbench import settings
from workbench.backends import get_backend
from workbench.backends.kubernetes import entrypoint, incluster, manifests
from workbench.backends.kubernetes.client import default_namespace
from workbench.spec import JobSpec
from workbench.workspace import read_json, write_json_atomic

pytestmark = pytest.mark.k8s

SCRIPT = """
import os, sys
for name in ("WORKBENCH_ROLE", "WORKBENCH_REPLICA_INDEX", "WORKBENCH_ATTEMPT", "RANK", "WORLD_SIZE", "MASTER_ADDR"):
    print(f"{name}={os.environ.get(name)}")
print("args", sys.argv[1:], "cwd", os.getcwd(), flush=True)
sys.exit(int(os.environ.get("EXIT_CODE", "0")))
"""


@pytest.fixture
def fake(workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeApiServer]:
    """A fake API server, made current through KUBECONFIG (context namespace "ml"), and the kubernetes backend."""
    with FakeApiServer() as server:
        monkeypatch.setenv("KUBECONFIG", str(server.write_kubeconfig(tmp_path / "kubeconfig", namespace="ml")))
        monkeypatch.setenv("WORKBENCH_BACKEND", "kubernetes")
        monkeypatch.delenv("WORKBENCH_K8S_NAMESPACE", raising=False)
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        yield server


@pytest.fixture
def script(write_script) -> Path:  # type: ignore[no-untyped-def]
    return write_script(SCRIPT, name="train.py")


def submit(script: Path, **kwargs) -> wb.Job:  # type: ignore[no-untyped-def]
    return wb.submit(str(script), args=["--epochs", "1"], **kwargs)


def requests_count(fake: FakeApiServer) -> int:
    return len(fake.requests)


# --- submit ------------------------------------------------------------------------------------


def test_submit_creates_a_headless_service_and_one_indexed_job_per_role(fake: FakeApiServer, script: Path) -> None:
    job = submit(script, framework="tensorflow", workers=2, ps=1, name="lenet")
    base = manifests.base_name(job.id)
    assert fake.names("services") == [base]
    assert fake.names("jobs") == sorted(f"{base}-{role}" for role in ("chief", "worker", "ps"))
    # What reached the API is the manifest, field for field: nothing lost in the client's models.
    config = manifests.PodConfig.from_settings("ml", job.workspace)
    for obj in manifests.render(job.id, JobSpec.from_dict(job.record.spec), config):
        stored = fake.get({"Service": "services", "Job": "jobs"}[obj["kind"]], obj["metadata"]["name"], "ml")
        assert stored["spec"] == obj["spec"]
        assert obj["metadata"].items() <= stored["metadata"].items()
    assert job.record.backend == "kubernetes"
    assert read_json(job.paths.run_json)["kubernetes"]["namespace"] == "ml"  # the kubeconfig context's
    assert job.status() == "queued"
    assert "worker-0: no pod yet" in (job.message or "")


def test_api_errors_become_workbench_errors_and_nothing_is_left_behind(fake: FakeApiServer, script: Path) -> None:
    fake.fail_next("POST", "jobs", 403)
    with pytest.raises(wb.WorkbenchError, match="lacks a permission.*jobs") as caught:
        submit(script, workers=2)
    assert "403" in str(caught.value)
    assert fake.names("services") == [] and fake.names("jobs") == []  # the Service created first was removed
    (job,) = wb.jobs()
    assert job.status() == "failed" and "could not start" in (job.message or "")


def test_an_unreachable_api_is_a_clear_error(
    workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: Path
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "kubeconfig", f"http://127.0.0.1:{port}")))
    monkeypatch.setenv("WORKBENCH_BACKEND", "kubernetes")
    with pytest.raises(wb.WorkbenchError, match=f"cannot reach the Kubernetes API at http://127.0.0.1:{port}"):
        submit(script)


def test_auto_backend_is_kubernetes_inside_a_pod(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    account = tmp_path / "serviceaccount"
    account.mkdir()
    monkeypatch.setattr(incluster, "SERVICE_ACCOUNT_DIR", account)
    monkeypatch.delenv("WORKBENCH_BACKEND", raising=False)
    monkeypatch.delenv("WORKBENCH_K8S_NAMESPACE", raising=False)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    assert get_backend().name == "local"  # a pod without an API token: no Kubernetes access
    (account / "token").write_text("t")
    (account / "namespace").write_text("team-a\n")
    assert get_backend().name == "kubernetes"
    assert default_namespace() == "team-a"  # jobs go to the Jupyter pod's own namespace
    monkeypatch.setenv("WORKBENCH_K8S_NAMESPACE", "elsewhere")
    assert default_namespace() == "elsewhere"
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST")
    assert get_backend().name == "local"


# --- status ------------------------------------------------------------------------------------


def test_status_goes_queued_running_succeeded_with_the_reasons_pods_wait(fake: FakeApiServer, script: Path) -> None:
    job = submit(script, workers=2)
    name = manifests.job_name(job.id, "worker")
    first, second = fake.make_pods(name)
    fake.set_pod(first, "Pending", unschedulable="0/3 nodes are available: 3 Insufficient nvidia.com/gpu.")
    fake.set_pod(second, "Pending", waiting=("ImagePullBackOff", 'Back-off pulling image "reg/tf:1"'))
    assert job.status() == "queued"
    assert "worker-0: Unschedulable: 0/3 nodes are available" in (job.message or "")
    assert "worker-1: ImagePullBackOff" in (job.message or "")
    fake.set_pod(first, "Running")
    assert job.status() == "queued"  # running means every replica runs, as locally
    fake.set_pod(second, "Running")
    assert job.status() == "running"
    assert job.record.started is not None
    for pod in (first, second):
        fake.set_pod(pod, "Succeeded", exit_code=0)
    assert job.status() == "running"  # until the Job controller says so
    fake.set_job_condition(name, "SuccessCriteriaMet", "CompletionsReached")
    assert job.status() == "succeeded"
    assert job.message == "all replicas finished"
    assert ("services", manifests.service_name(job.id), "Background") in fake.deletes
    assert read_json(job.paths.run_json)["state"] == "succeeded"
    before = requests_count(fake)
    assert job.status() == "succeeded"
    assert requests_count(fake) == before  # a finished job needs no API call


def test_a_failed_replica_fails_the_job_and_stops_the_other_roles(fake: FakeApiServer, script: Path) -> None:
    job = submit(script, framework="tensorflow", workers=2, ps=1)
    pods = {role: fake.make_pods(manifests.job_name(job.id, role), "Running") for role in ("chief", "worker", "ps")}
    assert job.status() == "running"
    fake.set_pod(pods["worker"][1], "Failed", exit_code=3)
    fake.set_job_condition(
        manifests.job_name(job.id, "worker"), "FailureTarget", "FailedIndexes", "Job has failed indexes"
    )
    assert job.status() == "failed"
    assert job.message == "worker-1 exited with code 3 (see logs/worker-1.log); FailedIndexes: Job has failed indexes"
    deleted = {(name, policy) for kind, name, policy in fake.deletes if kind == "jobs"}
    assert deleted == {
        (manifests.job_name(job.id, "chief"), "Foreground"),
        (manifests.job_name(job.id, "ps"), "Foreground"),
    }
    assert fake.names("services") == []


def test_a_parameter_server_job_succeeds_with_its_chief_and_stops_ps_and_workers(
    fake: FakeApiServer, script: Path
) -> None:
    job = submit(script, framework="tensorflow", workers=1, ps=1)
    for role in ("chief", "worker", "ps"):
        fake.make_pods(manifests.job_name(job.id, role), "Running")
    assert job.status() == "running"
    fake.set_job_condition(manifests.job_name(job.id, "chief"), "Complete", "CompletionsReached")
    assert job.status() == "succeeded"
    assert fake.names("jobs") == [manifests.job_name(job.id, "chief")]  # ps and worker serve forever: stopped


def test_a_restarted_replica_keeps_the_job_running_and_counts_attempts(fake: FakeApiServer, script: Path) -> None:
    job = submit(script, workers=1, max_restarts=1)
    name = manifests.job_name(job.id, "worker")
    (pod,) = fake.make_pods(name, "Running")
    assert job.status() == "running"
    fake.set_pod(pod, "Failed", exit_code=1)
    fake.make_pods(name, "Pending")  # the Job controller's replacement, failure count 1
    assert job.status() == "running"
    assert job.record.attempt == 1


def test_a_job_deleted_outside_the_workbench_is_failed(fake: FakeApiServer, script: Path) -> None:
    job = submit(script, workers=1)
    fake.objects.pop(("jobs", "ml", manifests.job_name(job.id, "worker")))
    assert job.status() == "failed"
    assert "Kubernetes Job of worker is gone" in (job.message or "")


def _api_time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_state_replicas_and_times_come_from_the_cluster_and_no_job_store_is_written(
    fake: FakeApiServer, script: Path, workspace: Path
) -> None:
    job = submit(script, workers=2)
    run_json = job.paths.run_json
    name = manifests.job_name(job.id, "worker")
    pods = fake.make_pods(name, "Running")
    for pod in pods:
        fake.set_pod(pod, "Running")
    assert job.status() == "running" and job.message == "2 replica(s) running"
    first = min(
        _api_time(fake.get("pods", p)["status"]["containerStatuses"][0]["state"]["running"]["startedAt"]) for p in pods
    )
    assert job.record.started == first
    assert read_json(run_json)["state"] == "queued"  # what the cluster says is not copied anywhere
    data = read_json(run_json)
    write_json_atomic(run_json, {**data, "state": "running", "message": "stale"})
    fake.set_pod(pods[1], "Pending")
    fake.objects.pop(("pods", "ml", pods[1]))  # the pod of worker-1 is gone and none replaces it yet
    assert job.status() == "queued" and "worker-1: no pod yet" in (
        job.message or ""
    )  # run.json's words count for nothing
    fake.make_pods(name, "Running", indexes=[1])
    fake.set_job_condition(name, "SuccessCriteriaMet", "CompletionsReached")
    decided = _api_time(fake.get("jobs", name)["status"]["conditions"][0]["lastTransitionTime"])
    assert wb.job(job.id[:12]).wait(timeout=10) == "succeeded"  # another handle, by id prefix
    assert job.record.ended == decided
    assert read_json(run_json)["state"] == "succeeded" and read_json(run_json)["ended"] == decided
    assert [j.id for j in wb.jobs()] == [job.id]
    second = submit(script, workers=1)
    assert [j.id for j in wb.jobs()] == [second.id, job.id]  # newest first
    assert second.cancel() == "cancelled" and second.status() == "cancelled"
    assert job.cancel() == "succeeded"  # an ended job stays as it ended
    assert sorted(p.name for p in (workspace / "state").iterdir()) == []  # no job database, no lock files
    assert list(workspace.rglob("*.sqlite*")) == []


def test_jobs_are_found_by_name_ambiguous_prefixes_list_candidates_and_delete_works(
    fake: FakeApiServer, script: Path, workspace: Path
) -> None:
    first = submit(script, name="lenet")
    second = submit(script, name="lenet")
    assert wb.job("lenet").id == second.id  # a name: its newest run
    with pytest.raises(wb.AmbiguousJob) as e:
        wb.job("lenet-")
    assert first.id in str(e.value) and second.id in str(e.value)
    with pytest.raises(wb.WorkbenchError, match="cancel it first"):
        wb.delete(second)
    assert second.cancel() == "cancelled"
    assert wb.delete("lenet") == second.id
    assert wb.job("lenet").id == first.id and not second.paths.root.exists()
    assert list((workspace / "state").iterdir()) == []  # still no job database


def test_a_cancel_another_process_began_is_finished_by_the_next_status(fake: FakeApiServer, script: Path) -> None:
    job = submit(script, workers=1)
    fake.make_pods(manifests.job_name(job.id, "worker"), "Running")
    data = read_json(job.paths.run_json)
    write_json_atomic(job.paths.run_json, {**data, "cancel_requested": True})  # that process stopped there
    assert job.status() == "cancelled" and job.message == "cancelled by request"
    assert fake.names("jobs") == fake.names("pods") == fake.names("services") == []


def test_a_local_job_is_not_followed_as_a_kubernetes_one(
    fake: FakeApiServer, script: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = submit(script, workers=1)
    data = read_json(job.paths.run_json)
    write_json_atomic(job.paths.run_json, {**data, "backend": "local"})
    with pytest.raises(wb.JobNotFound, match="ran with the local backend.*WORKBENCH_BACKEND=local"):
        wb.job(job.id)


# --- cancel ------------------------------------------------------------------------------------


def test_cancel_deletes_jobs_with_their_pods_and_the_service(fake: FakeApiServer, script: Path) -> None:
    job = submit(script, framework="tensorflow", workers=2, ps=1)
    for role in ("chief", "worker", "ps"):
        fake.make_pods(manifests.job_name(job.id, role), "Running")
    assert job.status() == "running"
    assert job.cancel() == "cancelled"
    assert sorted(fake.deletes) == sorted(
        [("jobs", manifests.job_name(job.id, role), "Foreground") for role in ("chief", "worker", "ps")]
        + [("services", manifests.service_name(job.id), "Background")]
    )
    assert fake.names("jobs") == fake.names("pods") == fake.names("services") == []
    assert job.status() == "cancelled" and job.record.cancel_requested
    assert job.cancel() == "cancelled" and len(fake.deletes) == 4  # nothing more to delete


# --- logs --------------------------------------------------------------------------------------


def test_logs_come_from_pods_line_by_line_across_restarts(fake: FakeApiServer, script: Path) -> None:
    job = submit(script, workers=1, max_restarts=1)
    name = manifests.job_name(job.id, "worker")
    (first,) = fake.make_pods(name, "Running")
    text = "epoch 1\nepoch 2\nhalf a li"
    fake.set_log(first, text)
    lines = job._backend().log_sources(job.workspace, job.id)["worker-0"]

    def round_() -> list[str]:
        out = []
        for line in lines:
            if line is None:
                return out
            out.append(line)
        raise AssertionError("a round ends with None")

    assert round_() == ["epoch 1", "epoch 2"]  # a partial line waits for its end
    assert round_() == []
    fake.set_log(first, text + "ne\ncrash")
    fake.set_pod(first, "Failed", exit_code=1)
    assert round_() == ["half a line", "crash"]  # a finished pod's last line comes out whole
    (second,) = fake.make_pods(name, "Running")
    fake.set_log(second, "resumed\n")
    assert round_() == ["===== restart 1: attempt 2 =====", "resumed"]


def test_logs_follow_streams_every_replica_until_the_job_ends(
    fake: FakeApiServer, script: Path, tmp_path: Path
) -> None:
    job = submit(script, workers=2)
    name = manifests.job_name(job.id, "worker")
    pods = fake.make_pods(name, "Running")
    files = [tmp_path / f"pod-{i}.log" for i in range(2)]
    for pod, path in zip(pods, files, strict=True):
        fake.set_log(pod, path)
    out = io.StringIO()
    follower = threading.Thread(target=job.logs, kwargs={"follow": True, "out": out})
    follower.start()
    for step in range(3):
        for i, path in enumerate(files):
            with open(path, "a") as f:
                f.write(f"worker {i} step {step}\n")
        time.sleep(0.4)  # the fake pods' pace: lines arrive while logs(follow=True) reads
    for pod in pods:
        fake.set_pod(pod, "Succeeded", exit_code=0)
    fake.set_job_condition(name, "Complete", "CompletionsReached")
    follower.join(timeout=30)
    assert not follower.is_alive()
    lines = out.getvalue().splitlines()
    for i in range(2):
        assert [line for line in lines if line.startswith(f"[worker-{i}]")] == [
            f"[worker-{i}] worker {i} step {step}" for step in range(3)
        ]


def test_logs_of_a_job_whose_pods_are_gone_come_from_the_workspace(fake: FakeApiServer, script: Path) -> None:
    job = submit(script, workers=2)
    fake.make_pods(manifests.job_name(job.id, "worker"), "Running")
    for i in range(2):  # what the entrypoint copied there while the pods ran
        job.paths.replica_log("worker", i).write_text(f"saved {i}\n")
    job.cancel()
    assert job.logs() == "[worker-0] saved 0\n[worker-1] saved 1"


# --- the pod entrypoint ------------------------------------------------------------------------


def run_pod(fake: FakeApiServer, job: wb.Job, role: str, index: int, **extra: str) -> subprocess.Popen[str]:
    """Run one pod of ``job`` as a local process: the container's command, working dir and environment
    as a kubelet would make them from what the API received (plus PATH, which the image would set)."""
    pod = pod_from_job(fake.get("jobs", manifests.job_name(job.id, role)), index)
    container = pod["spec"]["containers"][0]
    env = {**container_env(pod), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", **extra}
    return subprocess.Popen(
        [*container["command"], *container["args"]],
        cwd=container["workingDir"],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def test_entrypoint_runs_the_snapshot_with_the_replica_env_and_keeps_the_log(fake: FakeApiServer, script: Path) -> None:
    job = submit(script, framework="pytorch", workers=2)
    proc = run_pod(fake, job, "worker", 1, EXIT_CODE="3")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 3  # the script's exit code is the pod's
    master = f"{manifests.pod_hostname(job.id, 'worker', 0)}.{manifests.service_name(job.id)}"
    for line in (
        "WORKBENCH_ROLE=worker",
        "WORKBENCH_REPLICA_INDEX=1",
        "WORKBENCH_ATTEMPT=0",
        "RANK=1",
        "WORLD_SIZE=2",
        f"MASTER_ADDR={master}",
    ):
        assert line in out.splitlines()
    assert f"args ['--epochs', '1'] cwd {job.paths.code}" in out
    assert job.paths.replica_log("worker", 1).read_text() == out


def test_entrypoint_fails_with_the_config_error_code_when_the_script_is_missing(
    fake: FakeApiServer, script: Path
) -> None:
    job = submit(script, workers=1)
    (job.paths.code / "train.py").unlink()
    proc = run_pod(fake, job, "worker", 0)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == entrypoint.CONFIG_ERROR_EXIT
    assert "is not in the workspace" in out and "WORKBENCH_K8S_WORKSPACE_CLAIM" in out
    bare = subprocess.run(
        [sys.executable, "-m", "workbench.backends.kubernetes.entrypoint", str(script)],
        env={"PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bare.returncode == entrypoint.CONFIG_ERROR_EXIT
    assert f"{settings.FRAMEWORK_VAR}, {settings.ROLE_VAR}, JOB_COMPLETION_INDEX" in bare.stderr


def test_entrypoint_passes_sigterm_on_to_the_script(fake: FakeApiServer, write_script) -> None:  # type: ignore[no-untyped-def]
    script = write_script(
        """
        import signal, sys, time
        signal.signal(signal.SIGTERM, lambda *a: (print("stopping cleanly", flush=True), sys.exit(7)))
        print("ready", flush=True)
        time.sleep(60)  # the job's script: runs until the SIGTERM under test
        """,
        name="train.py",
    )
    job = submit(script, workers=1)
    proc = run_pod(fake, job, "worker", 0)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)  # what the kubelet does when the pod is deleted
    out, _ = proc.communicate(timeout=30)
    assert "stopping cleanly" in out
    assert proc.returncode == 7


def test_helper_replicas_stop_by_themselves_once_the_chief_succeeds(fake: FakeApiServer, write_script) -> None:  # type: ignore[no-untyped-def]
    """TF parameter servers (and PS-strategy workers) never exit: their pods end with the chief's,
    through the workspace, so their Jobs complete even if nobody polls the job's status."""
    script = write_script(
        """
        import os, sys, time
        if os.environ["WORKBENCH_ROLE"] == "chief":
            time.sleep(1)  # the job's script: the chief trains briefly
            sys.exit(0)
        print("serving", flush=True)
        time.sleep(120)  # a parameter server never exits by itself
        """,
        name="train.py",
    )
    job = submit(script, framework="tensorflow", workers=1, ps=1)
    helpers = [run_pod(fake, job, role, 0) for role in ("ps", "worker")]
    for proc in helpers:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "serving"
    chief = run_pod(fake, job, "chief", 0)
    out, _ = chief.communicate(timeout=60)
    assert chief.returncode == 0, out
    started = time.monotonic()
    for proc in helpers:
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out  # stopped on purpose: done, not failed
        assert "stopping this one" in out
    assert time.monotonic() - started < 2 * entrypoint.MARKER_POLL_S + 10
    assert (job.paths.root / "kubernetes" / "chief-0.exit").read_text() == "0\n"


def test_the_client_is_imported_only_when_the_kubernetes_backend_is_used() -> None:
    """`import workbench` and the local backend stay fast; a missing extra gives the install hint."""
    code = """
import sys
import workbench
from workbench.backends import get_backend
assert get_backend().name == "local" and "kubernetes" not in sys.modules, sorted(sys.modules)
sys.modules["kubernetes"] = None  # as if the extra were not installed
try:
    get_backend("kubernetes")
except workbench.WorkbenchError as e:
    print(e)
"""
    env = {k: v for k, v in os.environ.items() if k not in ("KUBERNETES_SERVICE_HOST", "WORKBENCH_BACKEND")}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "pip install 'workbench[kubernetes]'" in done.stdout
