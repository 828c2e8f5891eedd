"""Params: they reach the script (argv, WORKBENCH_PARAMS), run.json, and TensorBoard's hparams plugin (a real
TensorBoard over the workspace, asked as its frontend asks)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import requests

import workbench as wb
from workbench import services
from workbench.backends.local.processes import free_ports
from workbench.errors import SpecError

# A job script that writes TensorBoard scalars with tensorboard's own writer (no TensorFlow: the stub, as
# examples/mnist_torch does) and prints what it was given.
SCALARS = """
import json, os, sys, types
sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
from tensorboard.summary import Writer
from workbench import runtime

print("argv", json.dumps(sys.argv[1:]))
print("env", os.environ.get("WORKBENCH_PARAMS"))
params = runtime.params()
lr = float(params.get("lr", 0.1))
logdir = os.environ["WORKBENCH_LOG_DIR"]
train, val = Writer(os.path.join(logdir, "train")), Writer(os.path.join(logdir, "validation"))
for epoch in range(1, 4):
    train.add_scalar("epoch_loss", 1.0 / (epoch * lr * 10), step=epoch)
    val.add_scalar("epoch_accuracy", min(1.0, lr * epoch), step=epoch)
val.add_scalar("epoch_accuracy", lr, step=4)  # the final value is not the best one
train.close(); val.close()
"""


def test_params_reach_the_script_and_run_json(workspace, write_script):
    script = write_script(
        SCALARS + "\nruntime.log_params(seed=7, note='by hand')\nprint('all', json.dumps(runtime.params()))\n"
    )
    job = wb.submit(str(script), args=["--epochs", "3"], framework="none", params={"lr": 0.05, "opt": "adam"})
    assert job.wait(60) == "succeeded", job.logs()
    logs = job.logs()
    argv = json.loads(logs.split("argv ", 1)[1].splitlines()[0])
    assert argv == ["--epochs", "3", "--lr", "0.05", "--opt", "adam"]
    assert json.loads(logs.split("env ", 1)[1].splitlines()[0]) == {"lr": 0.05, "opt": "adam"}
    logged = json.loads(logs.split("all ", 1)[1].splitlines()[0])
    assert logged == {"lr": 0.05, "opt": "adam", "seed": 7, "note": "by hand"}
    run = json.loads(job.paths.run_json.read_text())
    assert run["params"] == {"lr": 0.05, "opt": "adam"} and run["spec"]["params"] == run["params"]
    assert json.loads((job.paths.root / "params.json").read_text()) == {"seed": 7, "note": "by hand"}
    # The launcher's HParams summary only: TensorBoard would ignore a second one for the run.
    assert len(list(job.paths.tb.glob("events.out.tfevents.*.hparams"))) == 1


def test_cli_param_values_are_json_when_they_parse(workspace, write_script):
    script = write_script(SCALARS)
    out = subprocess.run(
        [sys.executable, "-m", "workbench", "submit", str(script), "--framework", "none"]
        + ["--param", "lr=0.2", "--param", "deep=true", "--param", "opt=adam", "--param", "tag=1e-3x", "-f"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    job = wb.job(out.stdout.split()[0])
    assert job.record.spec["params"] == {"lr": 0.2, "deep": True, "opt": "adam", "tag": "1e-3x"}
    assert '"--deep", "true"' in job.logs()


@pytest.mark.parametrize(
    "params, message",
    [
        ({"--lr": 1}, "param name '--lr'"),
        ({"lr": [1, 2]}, "values must be bool, int, float or str"),
        ({"a b": 1}, "param name 'a b'"),
        (["lr"], "params must be a dict"),
    ],
)
def test_bad_params_are_refused_before_anything_is_created(workspace, write_script, params, message):
    script = write_script("print('never')\n")
    with pytest.raises(SpecError, match=message):
        wb.submit(str(script), framework="none", params=params)
    assert not (workspace / "runs").exists() or not list((workspace / "runs").iterdir())


def tensorboard(workspace, log):
    (port,) = free_ports(1)
    command = services._tensorboard(
        SimpleNamespace(runs=workspace / "runs", url=None), SimpleNamespace(host="127.0.0.1"), port
    )
    with open(log, "ab") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    return proc, services.SERVICES["tensorboard"].url(SimpleNamespace(host="127.0.0.1"), port).rstrip("/")


def post(url, body):
    r = requests.post(url, data=json.dumps(body), headers={"Content-Type": "application/json"}, timeout=30)
    r.raise_for_status()
    return r.json()


def until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except requests.RequestException as e:  # not listening yet
            last = e
        time.sleep(0.5)
    raise AssertionError(f"{what} after {timeout} s: {last!r}")


@pytest.mark.slow  # starts TensorBoard (which imports TensorFlow)
def test_tensorboard_hparams_api_lists_params_and_metrics(workspace, write_script, tmp_path):
    script = write_script(SCALARS)
    jobs = [
        wb.submit(str(script), framework="none", name="hp", params={"lr": lr, "opt": opt})
        for lr, opt in ((0.05, "adam"), (0.2, "sgd"))
    ]
    # Submitted without params, the script logs its own: TensorBoard gets them from runtime.log_params.
    logging = write_script(SCALARS + "\nruntime.log_params(lr=0.1, opt='rms')\n", name="own.py")
    jobs.append(wb.submit(str(logging), framework="none", name="own"))
    quiet = write_script("print('no params')\n", name="plain.py")
    plain = wb.submit(str(quiet), framework="none", name="plain")
    for job in [*jobs, plain]:
        assert job.wait(60) == "succeeded", job.logs()
    proc, url = tensorboard(workspace, tmp_path / "tensorboard.log")
    try:
        api = f"{url}/data/plugin/hparams"
        # What TensorBoard's frontend posts (tensorboard/webapp/hparams/_redux/hparams_data_source.ts).
        experiment = until(
            lambda: (
                (e := post(f"{api}/experiment", {"experimentName": "", "includeMetrics": True}))
                and len(e.get("metricInfos", [])) >= 2
                and e
            ),
            90,
            "no hparams experiment with metrics",
        )
        hparams = {h["name"]: h for h in experiment["hparamInfos"]}
        assert set(hparams) == {"lr", "opt"}
        assert hparams["opt"]["type"] == "DATA_TYPE_STRING" and hparams["lr"]["type"] == "DATA_TYPE_FLOAT64"
        metrics = {(m["name"]["group"], m["name"]["tag"]) for m in experiment["metricInfos"]}
        assert {("train", "epoch_loss"), ("validation", "epoch_accuracy")} <= metrics

        request = {
            "experimentName": "",
            "allowedStatuses": ["STATUS_FAILURE", "STATUS_RUNNING", "STATUS_SUCCESS", "STATUS_UNKNOWN"],
            "colParams": [{"hparam": name, "includeInResult": True} for name in hparams],
            "startIndex": 0,
            "sliceSize": 1000,
            "includeMetrics": True,
        }
        groups = post(f"{api}/session_groups", request)["sessionGroups"]
        by_run = {g["sessions"][0]["name"].split("/")[0]: g for g in groups}
        assert set(by_run) == {j.id for j in jobs}  # the run without params is no session
        expected = [j.record.spec["params"] for j in jobs[:2]] + [{"lr": 0.1, "opt": "rms"}]
        for job, params in zip(jobs, expected, strict=True):
            group = by_run[job.id]
            assert group["hparams"] == params
            values = {(m["name"]["group"], m["name"]["tag"]): m["value"] for m in group["metricValues"]}
            lr = params["lr"]
            assert values[("validation", "epoch_accuracy")] == pytest.approx(lr)  # the last value logged
    finally:
        proc.terminate()
        proc.wait(30)
