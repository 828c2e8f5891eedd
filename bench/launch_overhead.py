"""What launching through the workbench costs: LeNet-5 on MNIST run directly vs as a job.

``python -m bench.launch_overhead [--epochs 10] [--limit N] [--rounds 2]``

Each round trains ``examples/lenet/train.py`` twice with the same interpreter,
environment and arguments: once as a plain subprocess (``python train.py``)
and once through ``workbench.submit`` (single process, local backend). Rounds
alternate the order (direct/job, then job/direct) so drift in the machine's
load touches both sides alike. Printed:

- the wall-time ratio job / direct (sums over rounds; goal <= 1.03). Direct:
  from ``Popen`` to the process's exit. Job: from calling ``submit`` to the
  job's end as its launcher records it (``ended``); a notebook's ``job.wait()``
  sees it one poll interval (0.5 s by default) later;
- the launcher's fixed costs, which unlike the ratio hardly depend on how busy
  the machine is: the ``submit`` call, the time from ``submit`` returning to
  the job's first log line (vs ``Popen`` to the direct run's first line), the
  time from the last log line to the job's end (vs to the direct process's
  exit), and the CPU time the job's launcher process used;
- the CPU-time ratio job / direct: CPU seconds of the whole process tree
  (for the job: its launcher and the replica), sampled the same way on both
  sides. On a machine shared with other work the wall-time ratio is mostly
  noise; CPU time barely depends on the load;
- the test accuracy each run printed (``test_accuracy=...``; goal >= 0.98
  after 10 epochs on the full data).

Both sides write the same outputs (TensorBoard events, a checkpoint per
epoch): the direct run into a temporary folder named by ``WORKBENCH_LOG_DIR``
and ``WORKBENCH_CHECKPOINT_DIR``, the job into a temporary workspace (or
``--workspace``). ``--epochs 1 --limit 1000 --rounds 1`` is a quick smoke run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "examples" / "lenet" / "train.py"
ACCURACY = re.compile(r"test_accuracy=([0-9.]+)")
RATIO_GOAL = 1.03
ACCURACY_GOAL = 0.98


@dataclass
class Run:
    mode: str  # "direct" or "job"
    round: int
    wall_s: float
    first_line_s: float  # direct: after Popen; job: after submit returned
    tail_s: float  # from the last log line to the process's exit (direct) or the job's recorded end (job)
    submit_s: float  # job: how long the submit call took; direct: 0
    cpu_s: float  # CPU seconds of the process tree: the script (direct), or the launcher and its replica (job)
    launcher_cpu_s: float  # job: CPU seconds of its launcher (supervisor) process alone; direct: 0
    test_accuracy: float | None
    ok: bool
    load_1min: float  # the machine's load average when the run ended: how busy the cores were
    detail: str = ""


class TreeCpu(threading.Thread):
    """Samples the CPU time of a process and its descendants every ``interval`` s, until ``stop()``.

    Each process keeps its last sample after it exits, so the total misses at
    most the last interval of each process: the same on both sides.
    """

    def __init__(self, root_pid: Callable[[], int | None], interval: float = 0.5):
        super().__init__(daemon=True)
        self.root_pid = root_pid
        self.interval = interval
        self.seen: dict[int, float] = {}
        self.root: float = 0.0
        self._stop_event = threading.Event()

    def run(self) -> None:
        import psutil

        pid = None
        while not self._stop_event.wait(self.interval):
            pid = pid or self.root_pid()
            if not pid:
                continue
            try:
                root = psutil.Process(pid)
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                continue
            for proc in procs:
                try:
                    t = proc.cpu_times()
                except psutil.Error:
                    continue
                self.seen[proc.pid] = t.user + t.system
                if proc.pid == pid:
                    self.root = self.seen[pid]

    def stop(self) -> float:
        """Stop sampling; return the tree's total CPU seconds."""
        self._stop_event.set()
        self.join()
        return sum(self.seen.values())


def train_args(args: argparse.Namespace) -> list[str]:
    out = ["--epochs", str(args.epochs)]
    if args.limit:
        out += ["--limit", str(args.limit)]
    return out


def run_direct(args: argparse.Namespace, rnd: int, scratch: Path) -> Run:
    out = scratch / f"direct-{rnd}"
    out.mkdir(parents=True)
    env = {
        **os.environ,
        # What the launcher gives a replica with gpus=0, so both sides do the same work.
        "WORKBENCH_LOG_DIR": str(out / "tb"),
        "WORKBENCH_CHECKPOINT_DIR": str(out / "checkpoints"),
        "CUDA_VISIBLE_DEVICES": "",
        "PYTHONUNBUFFERED": "1",
    }
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), *train_args(args)],
        cwd=out,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # A session of its own, as the job's replica has (and a terminal's command): with Linux's
        # scheduler autogroups each session gets a fair share of a busy machine, so without this the
        # direct run would share one share with this process and lose every comparison under load.
        start_new_session=True,
    )
    assert proc.stdout is not None
    cpu = TreeCpu(lambda: proc.pid)
    cpu.start()
    first = last = None
    lines = []
    for line in proc.stdout:
        last = time.perf_counter()
        first = first or last
        lines.append(line)
    code = proc.wait()
    end = time.perf_counter()
    cpu_s = cpu.stop()
    (out / "stdout.log").write_text("".join(lines))
    accuracy = _accuracy("".join(lines))
    ok = code == 0 and accuracy is not None
    detail = "" if ok else f"exit status {code}; see {out / 'stdout.log'}"
    first_s = (first or end) - t0
    tail = end - (last or end)
    return Run("direct", rnd, end - t0, first_s, tail, 0.0, cpu_s, 0.0, accuracy, ok, _load(), detail)


def run_job(args: argparse.Namespace, rnd: int) -> Run:
    import workbench as wb

    t0, t0_clock = time.perf_counter(), time.time()  # the job's recorded end is wall-clock time
    job = wb.submit(str(SCRIPT), args=train_args(args), name=f"bench-lenet-{rnd}")
    returned = time.perf_counter()
    cpu = TreeCpu(lambda: job.record.supervisor_pid)
    cpu.start()
    first = None
    try:
        while first is None and not job.done():
            if job.logs():
                first = time.perf_counter() - returned
            else:
                time.sleep(0.01)
        while not job.done():
            time.sleep(1.0)  # gently: a busy poll would take CPU from the training it measures
    except BaseException:
        job.cancel()  # the job is detached: don't leave it training after Ctrl-C
        raise
    finally:
        cpu_s = cpu.stop()
    record = job.record
    ended = record.ended or time.time()
    log = job.paths.replica_log("worker", 0)
    tail = ended - log.stat().st_mtime if log.exists() else 0.0
    accuracy = _accuracy(job.logs() or "")
    ok = record.state == "succeeded" and accuracy is not None
    detail = "" if ok else f"job {job.id} {record.state}: {record.message}; see {job.paths.logs}"
    first_s = first if first is not None else ended - t0_clock
    wall = ended - t0_clock
    return Run("job", rnd, wall, first_s, tail, returned - t0, cpu_s, cpu.root, accuracy, ok, _load(), detail)


def _accuracy(text: str) -> float | None:
    found = ACCURACY.findall(text)
    return float(found[-1]) if found else None


def _load() -> float:
    return os.getloadavg()[0]


def _median(runs: list[Run], field: str) -> float:
    return statistics.median(getattr(r, field) for r in runs)


def report(runs: list[Run], args: argparse.Namespace) -> None:
    head = f"{'round':>5}  {'mode':<6}  {'wall s':>8}  {'cpu s':>8}  {'first line s':>12}  {'tail s':>6}  {'test acc':>8}  {'load':>5}"
    print(head)
    for r in runs:
        acc = f"{r.test_accuracy:.4f}" if r.test_accuracy is not None else "-"
        print(
            f"{r.round:>5}  {r.mode:<6}  {r.wall_s:>8.2f}  {r.cpu_s:>8.2f}  {r.first_line_s:>12.3f}  {r.tail_s:>6.2f}  {acc:>8}  "
            f"{r.load_1min:>5.2f}  {r.detail}"
        )
    direct = [r for r in runs if r.mode == "direct"]
    jobs = [r for r in runs if r.mode == "job"]
    ratio = sum(r.wall_s for r in jobs) / sum(r.wall_s for r in direct)
    mark = "meets" if ratio <= RATIO_GOAL else "misses"
    rounds = ", ".join(f"{j.wall_s / d.wall_s:.3f}" for d, j in zip(direct, jobs, strict=True))
    print(f"wall-time ratio job/direct: {ratio:.3f} ({mark} the goal <= {RATIO_GOAL}); per round: {rounds}")
    cpu_ratio = sum(r.cpu_s for r in jobs) / sum(r.cpu_s for r in direct)
    cpu_rounds = ", ".join(f"{j.cpu_s / d.cpu_s:.3f}" for d, j in zip(direct, jobs, strict=True))
    print(f"CPU-time ratio job/direct: {cpu_ratio:.3f}; per round: {cpu_rounds}")
    start = _median(jobs, "submit_s") + _median(jobs, "first_line_s") - _median(direct, "first_line_s")
    end = _median(jobs, "tail_s") - _median(direct, "tail_s")
    print(
        f"submit() took {_median(jobs, 'submit_s'):.3f} s; first log line {_median(jobs, 'first_line_s'):.3f} s "
        f"after submit returned (direct: {_median(direct, 'first_line_s'):.3f} s after Popen); "
        f"end {_median(jobs, 'tail_s'):.2f} s after the last log line (direct: exit after {_median(direct, 'tail_s'):.2f} s); "
        f"launcher CPU {_median(jobs, 'launcher_cpu_s'):.2f} s (medians)"
    )
    fixed = start + end
    print(
        f"fixed launch overhead: {fixed:+.2f} s per job ({start:+.2f} s to start, {end:+.2f} s to end) "
        f"= ratio {1 + fixed / _median(direct, 'wall_s'):.3f} at this run length, without load noise"
    )
    for mode, group in (("direct", direct), ("job", jobs)):
        accs = [r.test_accuracy for r in group if r.test_accuracy is not None]
        if accs:
            full = args.epochs >= 10 and not args.limit
            goal = (
                ("meets" if min(accs) >= ACCURACY_GOAL else "misses") + f" the goal >= {ACCURACY_GOAL}"
                if full
                else f"goal >= {ACCURACY_GOAL} applies to 10 epochs on the full data"
            )
            print(f"test accuracy after {args.epochs} epoch(s), {mode}: {', '.join(f'{a:.4f}' for a in accs)} ({goal})")


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.launch_overhead", description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--limit", type=int, default=None, help="examples per split (default: all)")
    p.add_argument("--rounds", type=int, default=2, help="each round runs both sides; order alternates")
    p.add_argument(
        "--workspace",
        type=Path,
        default=None,
        help="workspace for the jobs (default: a temporary one, removed at the end)",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the runs to this file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    scratch = Path(tempfile.mkdtemp(prefix="bench-launch-"))
    workspace = args.workspace or scratch / "workspace"
    os.environ["WORKBENCH_WORKSPACE"] = str(workspace)  # read by wb.submit at call time
    limit = f" --limit {args.limit}" if args.limit else ""
    print(
        f"launch overhead: {SCRIPT.relative_to(ROOT)} --epochs {args.epochs}{limit}, {args.rounds} round(s), "
        f"{sys.executable}, {os.cpu_count()} CPUs",
        flush=True,
    )
    runs: list[Run] = []
    try:
        for rnd in range(1, args.rounds + 1):
            order = ("direct", "job") if rnd % 2 else ("job", "direct")
            for mode in order:
                run = run_direct(args, rnd, scratch) if mode == "direct" else run_job(args, rnd)
                print(f"  round {rnd} {mode}: {run.wall_s:.2f} s (load {run.load_1min:.2f})", flush=True)
                runs.append(run)
        report(runs, args)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps([asdict(r) for r in runs], indent=2))
    finally:
        if runs and all(r.ok for r in runs):
            shutil.rmtree(scratch, ignore_errors=True)
        else:
            print(f"kept {scratch} for inspection", flush=True)
    return 0 if all(r.ok for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
