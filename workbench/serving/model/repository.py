"""What the server serves: the loaded versions of each model, kept in step with ``models/`` (hot swap).

A watcher thread reads each model's ``model.json`` (the registry's index, written last by promote) every poll
interval, or at once when woken (``POST /workbench/reload``). The versions it lists are the only ones served:
a folder the index does not name (a promote that died half way) is never loaded. When the index changes the
watcher loads the versions that should serve, warms each up with a few predictions, and only then swaps in a
new immutable :class:`ModelState`. Requests resolve a :class:`Servable` from the state they see; one that was
swapped out finishes what is queued before it stops, so requests in flight complete on the old version and
none fails. A version that does not load is logged, counted and skipped until its folder changes; the others
keep serving.

Which versions are loaded: the live one, every labeled one, those in the traffic split, and the newest ``keep``.

Each server process (the HTTP server's workers) has its own repository; nothing is shared between them.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import random
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

from workbench import settings
from workbench.background import stepping_aside
from workbench.errors import WorkbenchError
from workbench.registry.remote import mirror
from workbench.registry.store import VERSION_JSON, live_version, published_dirs, read_model_json, version_dirs
from workbench.serving.model import frameworks
from workbench.serving.model.batching import Batcher, Closed, Inputs, Outputs
from workbench.serving.model.frameworks.base import Framework, Runtime
from workbench.serving.model.peers import Peers
from workbench.serving.model.signature import Signature
from workbench.serving.model.validation import check_outputs
from workbench.workspace import Workspace, read_json

log = logging.getLogger("workbench.serving")


class NotFound(WorkbenchError):
    """No such model, version or label (HTTP 404, gRPC NOT_FOUND)."""


class Unavailable(WorkbenchError):
    """The version exists but is not ready to serve (HTTP 503, gRPC UNAVAILABLE)."""


class Events(Protocol):
    """What the repository reports (the server's metrics implement it)."""

    def loaded(self, model: str, version: int, seconds: float) -> None: ...
    def unloaded(self, model: str, version: int) -> None: ...
    def load_failed(self, model: str, version: int) -> None: ...
    def live(self, model: str, version: int | None) -> None: ...
    def batch(self, model: str, version: int, rows: int) -> None: ...


class NoEvents:
    def loaded(self, model: str, version: int, seconds: float) -> None:
        pass

    def unloaded(self, model: str, version: int) -> None:
        pass

    def load_failed(self, model: str, version: int) -> None:
        pass

    def live(self, model: str, version: int | None) -> None:
        pass

    def batch(self, model: str, version: int, rows: int) -> None:
        pass


@dataclass
class Servable:
    """One loaded model version and its batcher."""

    model: str
    version: int
    framework: str
    runtime: Runtime
    batcher: Batcher
    loaded_at: float = field(default_factory=time.time)

    @property
    def signature(self) -> Signature:
        return self.runtime.signature

    def retire(self) -> None:
        """Stop after the queued requests have run, then free the model (in the background)."""
        self.batcher.close()

        def finish() -> None:
            self.batcher.join(60)
            self.runtime.close()

        threading.Thread(target=finish, name=f"retire-{self.model}-{self.version}", daemon=True).start()


@dataclass(frozen=True)
class ModelState:
    """A model as the server sees it at one moment; replaced whole, never changed."""

    name: str
    data: dict[str, Any]
    servables: dict[int, Servable]
    failed: dict[int, str]
    loading: frozenset[int] = frozenset()

    def available(self) -> list[int]:
        return sorted(self.servables)

    def status(self, version: int | None = None, agreed: set[int] | None = None) -> list[tuple[int, str, str]]:
        """(version, TF Serving state: AVAILABLE/LOADING/END, error) of each version known, or of ``version``.
        ``agreed``: the versions every process of the server serves (others served here report LOADING)."""
        served = set(self.available()) if agreed is None else set(self.available()) & agreed
        rows = [(v, "AVAILABLE", "") for v in sorted(served)]
        rows += [(v, "LOADING", "") for v in sorted(self.loading | set(self.servables)) if v not in served]
        rows += [(v, "END", e) for v, e in sorted(self.failed.items())]
        if version is None:
            return rows
        picked = [r for r in rows if r[0] == version]
        if not picked:
            raise NotFound(f"model {self.name!r} has no version {version}; versions: {self.available()}")
        return picked

    def live(self) -> int | None:
        return self._live

    @cached_property
    def _live(self) -> int | None:  # asked on every unversioned request; the state never changes
        return live_version(self.data, set(self.servables))

    @cached_property
    def _traffic(self) -> tuple[list[int], list[float]]:
        choices, weights = [], []
        for ref, weight in (self.data.get("traffic") or {}).items():
            v = int(ref) if str(ref).isdigit() else self.data["labels"].get(ref)
            if v is not None and int(v) in self.servables and weight > 0:
                choices.append(int(v))
                weights.append(weight)
        return choices, weights

    def pick(self, version: int | None = None, label: str | None = None) -> Servable:
        if label is not None:
            if label not in self.data["labels"]:
                known = ", ".join(sorted(self.data["labels"])) or "none"
                raise NotFound(f"model {self.name!r} has no label {label!r}; labels: {known}")
            version = int(self.data["labels"][label])
        elif version is None:
            choices, weights = self._traffic
            version = random.choices(choices, weights)[0] if choices else self.live()
            if version is None:
                raise Unavailable(f"model {self.name!r} has no version that loaded; {self._failures()}")
        if version in self.servables:
            return self.servables[version]
        if version in self.loading:
            raise Unavailable(f"version {version} of model {self.name!r} is still loading; try again shortly")
        if version in self.failed:
            raise NotFound(f"version {version} of model {self.name!r} failed to load: {self.failed[version]}")
        serving = ", ".join(map(str, sorted(self.servables))) or "none"
        raise NotFound(f"model {self.name!r} has no loaded version {version}; loaded versions: {serving}")

    def _failures(self) -> str:
        return "; ".join(f"version {v}: {e}" for v, e in sorted(self.failed.items())) or "none published"


class ModelRepository:
    """The models the server serves, loaded from ``workspace/models`` and kept current by a watcher thread."""

    def __init__(
        self,
        workspace: Workspace,
        events: Events | None = None,
        *,
        max_batch: int = 64,
        max_wait: float = 0.0,
        keep: int = 2,
        poll: float = 0.5,
        warmup_batches: tuple[int, ...] = (1, 8),
        peers: Peers | None = None,
    ):
        self.workspace = workspace
        self.events: Events = events or NoEvents()
        self.max_batch, self.max_wait, self.keep, self.poll = max_batch, max_wait, max(1, keep), poll
        self.warmup_batches = warmup_batches
        self.peers = peers  # the server's other processes, if it has several
        self.ready = threading.Event()  # set after the first scan
        self.last_request = float("-inf")  # time.monotonic() of the latest predict (see _yielding)
        self._models: dict[str, ModelState] = {}
        self._fingerprints: dict[str, Any] = {}
        self._failed_at: dict[tuple[str, int], int] = {}  # (model, version) -> folder mtime when it failed
        self._settled: set[str] = set()  # frameworks imported, warmed up and frozen (see settle)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -------------------------------------------------------------- requests

    def models(self) -> dict[str, ModelState]:
        return self._models

    def state(self, name: str) -> ModelState:
        state = self._models.get(name)
        if state is None:
            raise NotFound(f"model {name!r} not found; models: {', '.join(sorted(self._models)) or 'none'}")
        return state

    def status(self, name: str, version: int | None = None) -> list[tuple[int, str, str]]:
        """The versions of ``name`` and their states (ModelState.status), AVAILABLE only where every process of
        the server serves them. Raises NotFound."""
        state = self.state(name)
        agreed = self.peers.agreed(name, set(state.servables)) if self.peers is not None else None
        return state.status(version, agreed)

    def resolve(self, name: str, version: int | None = None, label: str | None = None) -> Servable:
        return self.state(name).pick(version, label)

    async def run(
        self, servable: Servable, inputs: Inputs, version: int | None = None, label: str | None = None
    ) -> tuple[Servable, Outputs]:
        """Run ``inputs`` on ``servable`` through its batcher; if it was just swapped out, on what replaced it.
        Raises NotFound/Unavailable, or what the model raised."""
        loop = asyncio.get_running_loop()
        self.last_request = time.monotonic()
        for _ in range(5):
            try:
                future = servable.batcher.submit(inputs, loop)
            except Closed:  # swapped out between resolve and submit: the new state is already in place
                servable = self.resolve(servable.model, version, label)
                continue
            return servable, await future
        raise Unavailable(f"model {servable.model!r} is being swapped; try again")

    # -------------------------------------------------------------- watching

    def start(self, prepare: Callable[[], None] | None = None) -> None:
        """Watch ``models/`` from a thread; ``prepare`` (e.g. importing frameworks) runs there before the first scan,
        so that nothing imports a framework from two threads at once."""
        self._thread = threading.Thread(target=self._watch, args=(prepare,), name="model-watcher", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Scan now instead of at the next poll."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)
        for state in self._models.values():
            for s in state.servables.values():
                s.retire()
        if self.peers is not None:
            self.peers.leave()

    def _watch(self, prepare: Callable[[], None] | None) -> None:
        if prepare is not None:
            try:
                prepare()
            except Exception:
                log.exception("preparing the frameworks failed; models load on first use")
        while not self._stop.is_set():
            try:
                self.scan()
            except Exception:
                log.exception("scan of %s failed", self.workspace.models)
            self.ready.set()
            self._wake.wait(self.poll)
            self._wake.clear()

    def scan(self) -> None:
        """Bring every model in line with its index (only models whose files changed are looked at)."""
        self._mirror()
        root = self.workspace.models
        present = (
            sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []
        )
        for name in present:
            fingerprint = _fingerprint(root / name)
            if fingerprint[0] is None:
                continue  # no index yet: a first promote is still exporting
            if self._fingerprints.get(name) != fingerprint:
                self._sync(name, root / name)
                self._fingerprints[name] = fingerprint
        for name in set(self._models) - set(present):
            self._drop(name)

    def _mirror(self) -> None:
        """An s3:// workspace: copy changed ``model.json`` files and the new versions they list from the bucket
        into the local cache, which the scan then reads like any ``models/`` folder."""
        try:
            mirror(self.workspace)
        except Exception:  # noqa: BLE001 - the bucket unreachable: keep serving what is here, try again next poll
            log.exception("cannot copy the models of %s; serving what was copied before", self.workspace.url)

    def _sync(self, name: str, model_dir: Path) -> None:
        try:
            data = read_model_json(model_dir)
        except WorkbenchError as e:
            log.error("model %s: %s; still serving what was loaded", name, e)
            return
        published = published_dirs(model_dir, data)  # model.json is the truth: a bare folder is no version
        old = self._models.get(name)
        servables = {v: s for v, s in (old.servables.items() if old else ()) if v in published}
        failed = {v: e for v, e in (old.failed.items() if old else ()) if v in published}
        for v in published:
            if v in failed and self._failed_at.get((name, v)) != _mtime(published[v]):
                del failed[v]  # the folder changed: try again
        wanted = self._wanted(data, published, failed)
        serving = dict(servables)  # what requests see until the swap below
        new = sorted(wanted - set(servables) - set(failed), reverse=True)
        for v in new:
            self._set(name, ModelState(name, data, serving, dict(failed), frozenset(new)))
            try:
                servables[v] = self._load(name, v, published[v], data)
            except Exception as e:
                failed[v] = f"{type(e).__name__}: {e}" if not isinstance(e, WorkbenchError) else str(e)
                self._failed_at[(name, v)] = _mtime(published[v])
                self.events.load_failed(name, v)
                log.error(
                    "model %s version %s could not be loaded, skipped (%s); still serving %s",
                    name,
                    v,
                    failed[v],
                    sorted(serving) or "nothing",
                )
        keep = {v: s for v, s in servables.items() if v in wanted}
        state = ModelState(name, data, keep, failed)
        self._set(name, state)  # the swap: requests from now on resolve against the new state
        for v, s in servables.items():
            if v not in keep:
                self._retire(s)
        if old is not None:
            for v, s in old.servables.items():
                if v not in keep and v not in servables:
                    self._retire(s)
        self.events.live(name, state.live())
        log.info("model %s: serving versions %s, live %s", name, sorted(keep), state.live())
        for v in new:
            if v in keep:
                self._optimize(keep[v])

    def _wanted(self, data: dict[str, Any], published: dict[int, Path], failed: dict[int, str]) -> set[int]:
        refs = {int(v) for v in data["labels"].values()}
        if data.get("live") is not None:
            refs.add(int(data["live"]))
        for ref in data.get("traffic") or {}:
            v = int(ref) if str(ref).isdigit() else data["labels"].get(ref)
            if v is not None:
                refs.add(int(v))
        newest = [v for v in sorted(published, reverse=True) if v not in failed][: self.keep]
        return (refs | set(newest)) & set(published)

    def _load(self, name: str, version: int, path: Path, data: dict[str, Any]) -> Servable:
        t0 = time.perf_counter()
        fw_name = _framework_of(path, data["versions"].get(str(version), {}))
        framework = frameworks.get_framework(fw_name)
        self.settle(framework)
        with self._yielding():
            runtime = framework.load(path)
            try:
                self._warm(runtime)
            except Exception:
                runtime.close()
                raise
        batcher = Batcher(
            runtime.predict,
            self.max_batch,
            self.max_wait,
            name=f"batch-{name}-{version}",
            on_batch=lambda n: self.events.batch(name, version, n),
        )
        seconds = time.perf_counter() - t0
        self.events.loaded(name, version, seconds)
        log.info("model %s version %s loaded and warmed up in %.2f s", name, version, seconds)
        return Servable(name, version, fw_name, runtime, batcher)

    def _warm(self, runtime: Runtime) -> None:
        """A few predictions of the warm-up batch sizes, so that the first requests meet no first-call costs."""
        for rows in sorted({min(b, self.max_batch) for b in self.warmup_batches}):
            sample = runtime.signature.sample(rows)
            check_outputs(runtime.signature, sample, runtime.predict(sample))

    def _optimize(self, servable: Servable) -> None:
        """Make a version that serves faster (Runtime.optimize: TensorFlow folds its variables in), once it
        serves, so that promote-to-live does not wait for it. Requests keep running on it as loaded meanwhile."""
        t0 = time.perf_counter()
        try:
            with self._yielding():
                if not servable.runtime.optimize():
                    return
                self._warm(servable.runtime)
        except Exception:  # noqa: BLE001 - the version keeps serving as loaded
            log.exception(
                "model %s version %s: optimizing it failed; it serves as loaded", servable.model, servable.version
            )
            return
        log.info(
            "model %s version %s optimized for serving in %.2f s",
            servable.model,
            servable.version,
            time.perf_counter() - t0,
        )

    def _yielding(self) -> Any:
        """Load in slices while requests are coming in (any in the last second), so that they keep their latency:
        loading runs Python and the framework on the watcher thread, holding the GIL; pausing after each short
        slice bounds what the requests of other models wait (bench/serve_hotswap). An idle server loads flat out."""
        run_ms, _, pause_ms = settings.SERVE_LOAD_YIELD.get().partition(",")
        run_s, pause_s = float(run_ms or 0) / 1000, float(pause_ms or 0) / 1000
        if run_s <= 0 or pause_s <= 0 or time.monotonic() - self.last_request > 1.0:
            return nullcontext()
        return stepping_aside(run_s, pause_s)

    def settle(self, framework: Framework) -> None:
        """Import ``framework`` and pay its first-use costs (a tiny model through it), then move every object alive
        to the garbage collector's permanent generation, so that a full collection (loading a version triggers
        one) walks only the loaded models' objects, not the framework's ~300k. Watcher thread only."""
        if framework.name in self._settled:
            return
        framework.prepare()
        self._settled.add(framework.name)
        problem = framework.warm()
        if problem:
            log.warning("%s", problem)
        gc.collect()
        gc.freeze()

    def _retire(self, servable: Servable) -> None:
        self.events.unloaded(servable.model, servable.version)
        servable.retire()

    def _set(self, name: str, state: ModelState | None) -> None:
        """Replace the whole table (copy on write), so request handlers never see it change under them."""
        models = dict(self._models)
        if state is None:
            models.pop(name, None)
        else:
            models[name] = state
        self._models = models
        if self.peers is not None:
            self.peers.publish({n: sorted(s.servables) for n, s in models.items()})

    def _drop(self, name: str) -> None:
        state = self._models[name]
        self._set(name, None)
        self._fingerprints.pop(name, None)
        for s in state.servables.values():
            self._retire(s)
        self.events.live(name, None)


def _framework_of(path: Path, entry: dict[str, Any]) -> str:
    try:
        return str(read_json(path / VERSION_JSON)["framework"])
    except (OSError, ValueError, KeyError):
        pass
    if entry.get("framework"):
        return str(entry["framework"])
    detected = frameworks.detect_export(path)
    if detected is None:
        raise WorkbenchError(
            f"{path} holds no serving format a framework plugin knows ({', '.join(frameworks.known())})"
        )
    return detected


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0


def _fingerprint(model_dir: Path) -> tuple[Any, ...]:
    try:
        st = (model_dir / "model.json").stat()
        meta: tuple[int, int, int] | None = (st.st_mtime_ns, st.st_size, st.st_ino)
    except OSError:
        meta = None
    return meta, tuple(sorted((v, _mtime(p)) for v, p in version_dirs(model_dir).items()))
