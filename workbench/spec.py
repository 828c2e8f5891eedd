"""The job spec: what ``submit`` is asked to run, validated before anything is created."""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from workbench import environments
from workbench.errors import SpecError
from workbench.params import checked as checked_params

FRAMEWORKS = ("tensorflow", "pytorch", "mxnet", "none")


@dataclass(frozen=True)
class JobSpec:
    """Everything needed to run a training job, independent of the backend.

    ``script`` is absolute after :meth:`validated`; ``python`` is the interpreter
    each replica runs (a path, or a named environment, resolved at validation).
    """

    script: str
    args: tuple[str, ...] = ()
    framework: str = "tensorflow"
    workers: int = 1
    ps: int = 0
    gpus: int = 0
    name: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    python: str | None = None
    max_restarts: int = 0
    # Hyperparameters (workbench.params): passed as --NAME VALUE after args and as WORKBENCH_PARAMS JSON.
    params: dict[str, Any] = field(default_factory=dict)
    sweep: str | None = None  # id of the sweep this job is a trial of (workbench.experiments.sweep)
    # The local queue (docs/jobs.md): higher priority starts first; cpus: CPU slots held (default: one per replica).
    priority: int = 0
    cpus: int | None = None

    def roles(self) -> dict[str, int]:
        """Replica count per role, in launch order (see docs/distributed.md)."""
        if self.framework == "tensorflow" and self.ps > 0:
            # ParameterServerStrategy: one chief coordinates, workers compute, ps hold variables.
            return {"chief": 1, "worker": self.workers, "ps": self.ps}
        if self.framework == "mxnet" and self.ps > 0:
            return {"scheduler": 1, "server": self.ps, "worker": self.workers}
        return {"worker": self.workers}

    def validated(self) -> JobSpec:
        """Return a normalized copy, or raise :class:`SpecError` naming the problem."""
        if self.framework not in FRAMEWORKS:
            raise SpecError(f"unknown framework {self.framework!r}; choose one of {', '.join(FRAMEWORKS)}")
        for name in ("workers", "ps", "gpus", "max_restarts"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise SpecError(f"{name} must be an integer, got {value!r}")
        if self.workers < 1:
            raise SpecError(f"workers must be at least 1, got {self.workers}")
        if self.ps < 0 or self.gpus < 0 or self.max_restarts < 0:
            raise SpecError("ps, gpus and max_restarts must not be negative")
        if self.ps and self.framework not in ("tensorflow", "mxnet"):
            raise SpecError(f"parameter servers (ps={self.ps}) exist for tensorflow and mxnet, not {self.framework}")
        if self.framework == "mxnet" and self.workers > 1 and self.ps == 0:
            raise SpecError("distributed MXNet (kvstore dist_sync) needs at least one parameter server: pass ps=1")
        self._validate_queue_options()
        if isinstance(self.args, (str, bytes)):
            raise SpecError("args must be a list of strings, e.g. ['--epochs', '10'], not one string")
        script = Path(self.script).expanduser()
        if not script.is_file():
            raise SpecError(f"training script {self.script!r} does not exist (looked at {script.resolve()})")
        if not isinstance(self.env, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.env.items()
        ):
            raise SpecError("env must map variable names to string values")
        if self.name is not None and not str(self.name).strip():
            raise SpecError("name must not be empty")
        params = checked_params(self.params)
        return JobSpec(
            script=str(script.resolve()),
            args=tuple(str(a) for a in self.args),
            framework=self.framework,
            workers=self.workers,
            ps=self.ps,
            gpus=self.gpus,
            name=self.name or script.stem,
            env=dict(self.env),
            python=resolve_python(self.python, self.framework),
            max_restarts=self.max_restarts,
            params=params,
            sweep=self.sweep,
            priority=self.priority,
            cpus=self.cpus,
        )

    def _validate_queue_options(self) -> None:
        if not isinstance(self.priority, int) or isinstance(self.priority, bool):
            raise SpecError(f"priority must be an integer (higher starts first), got {self.priority!r}")
        if self.cpus is not None and (not isinstance(self.cpus, int) or isinstance(self.cpus, bool) or self.cpus < 1):
            raise SpecError(f"cpus must be a whole number of CPU slots, at least 1, got {self.cpus!r}")

    def command_args(self) -> list[str]:
        """What follows the script on each replica's command line: ``args``, then ``--NAME VALUE`` per param."""
        from workbench.params import as_args

        return [*self.args, *as_args(self.params)]

    def command_env(self) -> dict[str, str]:
        """The job's own variables for each replica: ``env``, plus ``WORKBENCH_PARAMS`` when it has params."""
        from workbench import settings

        return {**self.env, **({settings.PARAMS_VAR: json.dumps(self.params)} if self.params else {})}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["args"] = list(self.args)
        d["params"] = dict(self.params)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> JobSpec:
        d = dict(d)
        d["args"] = tuple(d.get("args", ()))
        return cls(**d)


def resolve_python(python: str | None, framework: str) -> str:
    """The interpreter a job runs in: given path, named environment, framework default, or ours."""
    if python is None:
        named = environments.for_framework(framework)
        return named or sys.executable
    if python in environments.known():
        return environments.known()[python]
    path = Path(python).expanduser()
    if path.is_dir():  # a venv folder
        path = path / "bin" / "python"
    if not path.exists():
        found = shutil.which(python)
        if found is None:
            raise SpecError(
                f"python {python!r} is neither an interpreter, a venv, nor a named environment "
                f"(known: {', '.join(environments.known()) or 'none'})"
            )
        return found
    return str(path.absolute())
