"""Hyperparameter sweeps: trials are ordinary jobs (``wb.submit``), chosen by Optuna.

``wb.sweep("train.py", {"lr": [1e-3, 1e-2], "batch": [32, 64]}, metric="val_accuracy", parallel=2)`` creates an
Optuna study (RDB storage: ``state/sweeps.sqlite``), asks it for each trial's params and submits the trial as a job
with those params and the sweep's id; a finished trial is told the best value its job logged for ``metric``. The
sweep's settings are in ``state/sweeps/<id>.json`` and each trial's job id in the study, so any process can
reattach (:func:`sweep_by_id`, :func:`sweeps`). The sweep advances while someone calls :meth:`Sweep.wait` (or
:meth:`Sweep.step`): a notebook restart loses nothing, the next ``wait()`` goes on (one driver at a time, by a
file lock). Strategies: "grid" (every combination once, in order), "random" and "tpe" (Optuna's samplers).

Space: a list is a choice among its values; ``(low, high)`` a uniform range (int when both are ints);
``(low, high, "log")`` a log-uniform range; an ``optuna.distributions`` object as it is. Grid takes lists only.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import asdict, dataclass, field
from itertools import product
from typing import TYPE_CHECKING, Any, cast

from workbench.errors import JobNotFound, SpecError, WorkbenchError
from workbench.workspace import Workspace, read_json, write_json_atomic

if TYPE_CHECKING:
    import optuna
    import pandas as pd

    from workbench.job import Job

STRATEGIES = ("grid", "random", "tpe")
JOB_ATTR = "workbench_job"  # the trial's job id, a user attribute of the Optuna trial


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise WorkbenchError("sweeps need Optuna: pip install 'optuna>=4'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def distributions(space: dict[str, Any]) -> dict[str, Any]:
    """The search space as Optuna distributions, or :class:`SpecError` naming the entry it cannot read."""
    dist = _optuna().distributions
    out = {}
    for name, value in space.items():
        if isinstance(value, dist.BaseDistribution):
            out[name] = value
        elif isinstance(value, list) and value:
            out[name] = dist.CategoricalDistribution(value)
        elif isinstance(value, tuple) and len(value) in (2, 3) and (len(value) == 2 or value[2] == "log"):
            low, high = value[0], value[1]
            log = len(value) == 3
            if isinstance(low, int) and isinstance(high, int) and not log:
                out[name] = dist.IntDistribution(low, high)
            else:
                out[name] = dist.FloatDistribution(float(low), float(high), log=log)
        else:
            raise SpecError(
                f"space[{name!r}] = {value!r}: give a list of values, (low, high), (low, high, 'log') "
                "or an optuna.distributions object"
            )
    if not out:
        raise SpecError("the search space is empty")
    return out


@dataclass
class SweepConfig:
    """What a sweep runs: kept in ``state/sweeps/<id>.json``."""

    id: str
    script: str
    space: dict[str, str]  # name -> optuna.distributions.distribution_to_json
    metric: str
    mode: str
    trials: int
    parallel: int
    strategy: str
    seed: int | None
    prune: bool
    args: list[str]
    submit: dict[str, Any]
    created: float = field(default_factory=time.time)


def _dir(workspace: Workspace) -> Any:
    return workspace.state / "sweeps"


def _storage(workspace: Workspace) -> Any:
    optuna = _optuna()
    workspace.state.mkdir(parents=True, exist_ok=True)
    return optuna.storages.RDBStorage(f"sqlite:///{workspace.state / 'sweeps.sqlite'}")


class Sweep:
    """A sweep: its settings, its Optuna study, its trials' jobs. Cheap to create; reads fresh state."""

    def __init__(self, config: SweepConfig, workspace: Workspace):
        self.config = config
        self.workspace = workspace
        self.id = config.id
        self._storage: Any = None  # one SQLAlchemy engine per handle, not one per look at the study

    def __repr__(self) -> str:
        states = [t.state.name.lower() for t in self.study.trials]
        return f"Sweep({self.id!r}, {self.config.strategy}, {len(states)}/{self.config.trials} trials)"

    @property
    def space(self) -> dict[str, Any]:
        to_dist = _optuna().distributions.json_to_distribution
        return {k: to_dist(v) for k, v in self.config.space.items()}

    @property
    def study(self) -> optuna.Study:
        optuna = _optuna()
        c = self.config
        if c.strategy in ("grid", "random"):  # grid: each trial's point is enqueued (see _start)
            sampler = optuna.samplers.RandomSampler(seed=c.seed)
        else:
            sampler = optuna.samplers.TPESampler(seed=c.seed)
        # Small sweeps are the norm here: judge from the second finished trial on (Optuna's default waits for 5).
        pruner = optuna.pruners.MedianPruner(n_startup_trials=2) if c.prune else optuna.pruners.NopPruner()
        if self._storage is None:
            self._storage = _storage(self.workspace)
        return optuna.load_study(study_name=c.id, storage=self._storage, sampler=sampler, pruner=pruner)

    # ---------------------------------------------------------------- driving

    def step(self) -> bool:
        """Settle finished trials, prune, start new ones up to ``parallel``; return True when the sweep is done."""
        study = self.study
        running = [t for t in study.trials if t.state.name == "RUNNING"]
        for trial in running:
            self._settle(study, trial)
        trials = study.get_trials(deepcopy=False)
        active = sum(t.state.name == "RUNNING" for t in trials)
        while len(trials) < self.config.trials and active < self.config.parallel:
            if not self._start(study):
                break
            trials = study.get_trials(deepcopy=False)
            active += 1
        return active == 0 and len(trials) >= self._planned(study)

    def _planned(self, study: optuna.Study) -> int:
        if self.config.strategy == "grid":  # the grid may be smaller than asked
            return min(self.config.trials, len(self.grid()))
        return self.config.trials

    def grid(self) -> list[dict[str, Any]]:
        """Every combination of a grid sweep's values, in trial order."""
        names = list(self.space)
        return [dict(zip(names, values, strict=True)) for values in product(*(self.space[n].choices for n in names))]

    def _start(self, study: optuna.Study) -> bool:
        from workbench.api import submit

        if len(study.trials) >= self._planned(study):
            return False
        c = self.config
        if c.strategy == "grid":
            # A plain product, enqueued one point at a time: Optuna's GridSampler stops the study (Study.stop) when
            # the grid is used up, which the ask-and-tell interface refuses outside study.optimize.
            study.enqueue_trial(self.grid()[len(study.trials)])
        trial = study.ask(self.space)
        options = dict(c.submit)
        name = options.pop("name", None) or "sweep"
        try:
            job = submit(
                c.script, args=c.args, params=trial.params, sweep=c.id, name=f"{name}-{trial.number}", **options
            )
        except Exception:
            study.tell(trial, state=_optuna().trial.TrialState.FAIL)
            raise
        trial.set_user_attr(JOB_ATTR, job.id)
        return True

    def _settle(self, study: optuna.Study, frozen: Any) -> None:
        from workbench.experiments.compare import best_of, find_tag
        from workbench.job import Job

        optuna = _optuna()
        job_id = frozen.user_attrs.get(JOB_ATTR)
        if job_id is None:  # asked, but the submit never recorded its job (a crash in between)
            study.tell(frozen.number, state=optuna.trial.TrialState.FAIL)
            return
        try:
            job = Job(job_id, self.workspace)
        except JobNotFound:
            study.tell(frozen.number, state=optuna.trial.TrialState.FAIL)
            return
        state = job.status()
        series = job.scalars()
        tag = find_tag(series, self.config.metric)
        points = series.get(tag, []) if tag else []
        if state == "running" and self.config.prune and points:
            trial = optuna.trial.Trial(study, frozen._trial_id)
            for step, value in points:
                if step not in frozen.intermediate_values:
                    trial.report(value, step)
            if trial.should_prune():
                job.cancel()
                study.tell(frozen.number, state=optuna.trial.TrialState.PRUNED)
            return
        if state not in ("succeeded", "failed", "cancelled"):
            return
        if state == "succeeded" and points:
            study.tell(frozen.number, best_of(points, self.config.mode))
        else:
            study.tell(frozen.number, state=optuna.trial.TrialState.FAIL)

    def wait(self, timeout: float | None = None, poll: float = 1.0) -> Sweep:
        """Drive the sweep until every trial has ended (``TimeoutError`` after ``timeout`` s); return it.

        Only one process drives a sweep at a time; a second ``wait()`` waits for the first's lock."""
        from filelock import FileLock, Timeout

        deadline = None if timeout is None else time.monotonic() + timeout
        lock = FileLock(str(_dir(self.workspace) / f"{self.id}.lock"))
        while True:
            try:
                with lock.acquire(timeout=poll):
                    if self.step():
                        return self
            except Timeout:  # another process drives it: watch
                pass
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"sweep {self.id} not finished after {timeout} s")
            time.sleep(poll)

    def cancel(self) -> None:
        """Cancel the running trials' jobs and start no more."""
        self.config.trials = len(self.study.trials)
        _save(self.workspace, self.config)
        for job in self.trial_jobs():
            if not job.done():
                job.cancel()
        self.step()

    # ---------------------------------------------------------------- results

    def trial_jobs(self) -> list[Job]:
        """The jobs of the trials started so far, in trial order."""
        from workbench.job import Job

        ids = [t.user_attrs.get(JOB_ATTR) for t in self.study.trials]
        return [Job(i, self.workspace) for i in ids if i]

    def trials(self) -> pd.DataFrame:
        """One row per trial: ``trial``, ``state`` (Optuna's: complete, pruned, fail, running), ``value`` (the best
        ``metric`` its job logged), its params, then the job's columns from :func:`workbench.runs`."""
        from workbench.backends import get_backend
        from workbench.experiments.compare import FIXED, pandas, run_row

        store = get_backend().records(self.workspace)
        rows = []
        for t in self.study.trials:
            row: dict[str, Any] = {"trial": t.number, "state": t.state.name.lower(), "value": t.value, **t.params}
            job_id = t.user_attrs.get(JOB_ATTR)
            if job_id:
                job_row = run_row(self.workspace, store.get(job_id))
                row.update({k: v for k, v in job_row.items() if k not in t.params and k != "sweep"})
            rows.append(row)
        return pandas().DataFrame(rows, columns=None if rows else ["trial", "state", "value", *FIXED])

    def best(self) -> Job:
        """The job of the trial with the best value (``mode``) of ``metric``: ``wb.promote(sweep.best(), ...)``."""
        from workbench.job import Job

        done = [t for t in self.study.trials if t.state.name == "COMPLETE" and t.value is not None]
        if not done:
            raise WorkbenchError(f"sweep {self.id} has no finished trial with a {self.config.metric!r} value yet")
        pick = max if self.config.mode == "max" else min
        best = pick(done, key=lambda t: cast(float, t.value))  # done holds only trials with a value
        return Job(best.user_attrs[JOB_ATTR], self.workspace)


def _save(workspace: Workspace, config: SweepConfig) -> None:
    write_json_atomic(_dir(workspace) / f"{config.id}.json", asdict(config))


def sweep(
    script: str,
    space: dict[str, Any],
    *,
    metric: str,
    mode: str = "max",
    trials: int | None = None,
    parallel: int = 1,
    strategy: str = "grid",
    name: str | None = None,
    args: Any = (),
    seed: int | None = None,
    prune: bool = False,
    **submit_options: Any,
) -> Sweep:
    """Start a sweep of ``script`` over ``space``; return the :class:`Sweep` with its first trials submitted.

    ``metric``: the scalar each trial is judged by (a TensorBoard tag, its last part, or Keras' ``val_accuracy``
    for ``validation/epoch_accuracy``), best value over the run by ``mode`` ("max" or "min"). ``trials``: how
    many (grid: default and most, the number of combinations). ``parallel``: trials running at once.
    ``strategy``: "grid", "random" or "tpe". ``prune``: cancel a running trial whose ``metric`` falls below the
    median of earlier trials at the same step (Optuna's MedianPruner, from the third trial on). ``args`` and ``submit_options`` (framework, workers, gpus, env,
    python...) go to every trial's :func:`workbench.submit`; its jobs are named ``<name>-<trial number>``.
    Call :meth:`Sweep.wait` to run it to the end.
    """
    from pathlib import Path

    optuna = _optuna()
    if strategy not in STRATEGIES:
        raise SpecError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if mode not in ("max", "min"):
        raise SpecError(f"mode must be 'max' or 'min', got {mode!r}")
    if not isinstance(parallel, int) or parallel < 1:
        raise SpecError(f"parallel must be a positive integer, got {parallel!r}")
    dists = distributions(space)
    if strategy == "grid":
        lists = {k: d for k, d in dists.items() if isinstance(d, optuna.distributions.CategoricalDistribution)}
        if len(lists) != len(dists):
            raise SpecError("a grid sweep takes lists of values only; use strategy='random' or 'tpe' for ranges")
        size = 1
        for d in lists.values():
            size *= len(d.choices)
        trials = min(trials or size, size)
    if not trials or trials < 1:
        raise SpecError("trials must be a positive integer for random and tpe sweeps")
    if isinstance(args, (str, bytes)):
        raise SpecError("args must be a list of strings, e.g. ['--epochs', '2'], not one string")
    script_path = Path(script).expanduser()
    if not script_path.is_file():
        raise SpecError(f"training script {script!r} does not exist (looked at {script_path.resolve()})")
    workspace = Workspace.current().ensure()
    slug = "".join(c if c.isalnum() else "-" for c in (name or script_path.stem).lower()).strip("-")[:30] or "sweep"
    config = SweepConfig(
        id=f"{slug}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}",
        script=str(script_path.resolve()),
        space={k: optuna.distributions.distribution_to_json(d) for k, d in dists.items()},
        metric=metric,
        mode=mode,
        trials=int(trials),
        parallel=parallel,
        strategy=strategy,
        seed=seed,
        prune=prune,
        args=[str(a) for a in args],
        submit={**submit_options, "name": name or slug},
    )
    optuna.create_study(
        study_name=config.id,
        storage=_storage(workspace),
        direction="maximize" if mode == "max" else "minimize",
    )
    _save(workspace, config)
    s = Sweep(config, workspace)
    s.step()
    return s


def sweep_by_id(sweep_id: str) -> Sweep:
    """The sweep with this id (or unique id prefix), from any process: e.g. after a notebook restart."""
    workspace = Workspace.current()
    found = [s for s in sweeps() if s.id == sweep_id] or [s for s in sweeps() if s.id.startswith(sweep_id)]
    if len(found) != 1:
        known = ", ".join(s.id for s in sweeps()) or "none"
        what = "no" if not found else "more than one"
        raise WorkbenchError(f"{what} sweep {sweep_id!r} in workspace {workspace.root} (sweeps: {known})")
    return found[0]


def sweeps() -> list[Sweep]:
    """Every sweep of the workspace, newest first."""
    workspace = Workspace.current()
    folder = _dir(workspace)
    configs = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            configs.append(SweepConfig(**read_json(path)))
        except (OSError, ValueError, TypeError):
            continue
    return [Sweep(c, workspace) for c in sorted(configs, key=lambda c: c.created, reverse=True)]
