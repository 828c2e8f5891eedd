"""What the server serves: the loaded versions of each model, kept in step with ``models/`` (hot swap).

A watcher thread scans ``models/`` every poll interval (or at once when woken
by ``POST /workbench/reload``). When a model's ``model.json`` or version
folders change it loads the versions that should serve, warms each up with a
few predictions, and only then swaps in a new immutable :class:`ModelState`.
Requests resolve a :class:`Servable` from the state they see; one that was
swapped out finishes what is queued before it stops, so requests in flight
complete on the old version and none fails. A version that does not load is
logged, counted and skipped until its folder changes; the others keep serving.

Which versions are loaded: the live one, every labeled one, those in the
traffic split, and the newest ``keep`` that load.

With several worker processes (:mod:`workbench.serving.workers`) each loads
every version itself; it swaps a new one in only once all have loaded it.
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
from typing import TYPE_CHECKING, Any

from workbench import settings
from workbench.background import on_low_priority_thread, stepping_aside
from workbench.errors import WorkbenchError
from workbench.registry import frameworks
from workbench.registry.frameworks.base import Framework, Runtime
from workbench.registry.signature import Signature
from workbench.registry.store import VERSION_JSON, live_version, published_dirs, read_model_json, version_dirs
from workbench.registry.validation import check_outputs
from workbench.serving.batching import Batcher, Closed, Inputs, Outputs
from workbench.serving.metrics import ServerMetrics, labels
from workbench.workspace import Workspace, read_json

if TYPE_CHECKING:
    from workbench.serving.native import Lane, NativeFrontend
    from workbench.serving.predlog import PredictionLog
    from workbench.serving.workers import Balancer, Peers

log = logging.getLogger("workbench.serving")


class NotFound(WorkbenchError):
    """No such model, version or label (HTTP 404)."""


class Unavailable(WorkbenchError):
    """The version exists but is not ready to serve (HTTP 503)."""


@dataclass
class Servable:
    """One loaded model version, its batcher, and its lane in the native front end (if it serves this model)."""

    model: str
    version: int
    framework: str
    runtime: Runtime
    batcher: Batcher
    lane: Lane | None = None
    loaded_at: float = field(default_factory=time.time)

    @property
    def signature(self) -> Signature:
        return self.runtime.signature

    def retire(self) -> None:
        """Stop after the queued requests have run, then free the model (in the background)."""
        self.batcher.close()
        if self.lane is not None:
            self.lane.close()

        def finish() -> None:
            self.batcher.join(60)
            if self.lane is not None:
                self.lane.join(60)
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
    unconfirmed: frozenset[int] = frozenset()  # swapped in here, not yet known to be in every worker process

    def available(self) -> list[int]:
        """The versions to report as available: served here and, with several worker processes, by all of them."""
        return [v for v in self.servables if v not in self.unconfirmed]

    def live(self) -> int | None:
        return self._live

    @cached_property
    def _live(self) -> int | None:  # asked on every unversioned request; the state never changes
        return live_version(self.data, set(self.servables))

    @cached_property
    def _traffic(self) -> tuple[list[int], list[float]]:
        traffic = self.data.get("traffic") or {}
        choices, weights = [], []
        for ref, weight in traffic.items():
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
            version = self._split() or self.live()
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

    def _split(self) -> int | None:
        choices, weights = self._traffic
        return random.choices(choices, weights)[0] if choices else None

    def _failures(self) -> str:
        return "; ".join(f"version {v}: {e}" for v, e in sorted(self.failed.items())) or "none on disk"


class ModelRepository:
    """The models the server serves, loaded from ``workspace/models`` and kept current by a watcher thread."""

    def __init__(
        self,
        workspace: Workspace,
        metrics: ServerMetrics,
        *,
        max_batch: int = 64,
        max_wait: float = 0.0,
        keep: int = 2,
        poll: float = 0.5,
        warmup_batches: tuple[int, ...] = (1, 8),
        peers: Peers | None = None,
    ):
        self.workspace = workspace
        self.metrics = metrics
        self.max_batch, self.max_wait, self.keep, self.poll = max_batch, max_wait, max(1, keep), poll
        self.warmup_batches = warmup_batches
        self.peers = peers  # the other worker processes of this server, if any
        self.balancer: Balancer | None = None  # moves connections between those (set once this worker serves)
        self.native: NativeFrontend | None = None  # serves the common predict requests in C, if set before start()
        self.gather = 0.0  # native lanes: s a batch waits for more while requests keep coming (see native.Lane)
        self.prediction_log: PredictionLog | None = None  # where native lanes log their sample of predictions
        self.log_sample = 0.0
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

    def resolve(self, name: str, version: int | None = None, label: str | None = None) -> Servable:
        return self.state(name).pick(version, label)

    async def run(
        self,
        servable: Servable,
        inputs: Inputs,
        version: int | None = None,
        label: str | None = None,
        alone: bool = False,
    ) -> tuple[Servable, Outputs]:
        """Run ``inputs`` on ``servable`` through its batcher; if it was just swapped out, on what replaced it.
        ``alone``: no other client is connected, so nothing could join a batch; run at once if the model is idle."""
        loop = asyncio.get_running_loop()
        self.last_request = now = time.monotonic()
        if self.balancer is not None:
            self.balancer.stamp(now)
        if alone:
            outputs = servable.batcher.call_now(inputs)
            if outputs is not None:
                return servable, outputs
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

    def _watch(self, prepare: Callable[[], None] | None) -> None:
        if prepare is not None:
            prepare()
        while not self._stop.is_set():
            try:
                self.scan()
            except Exception:
                log.exception("scan of %s failed", self.workspace.models)
            self.ready.set()
            self._wake.wait(self.poll)
            self._wake.clear()

    def scan(self) -> None:
        """Bring every model in line with disk (only models whose files changed are looked at)."""
        root = self.workspace.models
        present = (
            sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []
        )
        for name in present:
            fingerprint = _fingerprint(root / name)
            if fingerprint == (None, ()):
                continue  # a first promote is still exporting into its staging folder
            if self._fingerprints.get(name) != fingerprint:
                self._sync(name, root / name)
                self._fingerprints[name] = fingerprint
        for name in set(self._models) - set(present):
            self._drop(name)

    def _sync(self, name: str, model_dir: Path) -> None:
        try:
            data = read_model_json(model_dir)
        except WorkbenchError as e:
            log.error("model %s: %s; still serving what was loaded", name, e)
            return
        on_disk = published_dirs(model_dir, data)  # model.json is the truth: a bare folder is no version
        old = self._models.get(name)
        servables = {v: s for v, s in (old.servables.items() if old else ()) if v in on_disk}
        failed = {v: e for v, e in (old.failed.items() if old else ()) if v in on_disk}
        for v in on_disk:
            if v in failed and self._failed_at.get((name, v)) != _mtime(on_disk[v]):
                del failed[v]  # the folder changed: try again
        wanted = self._wanted(data, on_disk, failed)
        serving = dict(servables)  # what requests see until the swap below
        new = sorted(wanted - set(servables) - set(failed), reverse=True)
        with self._aside(name, {v: _mtime(on_disk[v]) for v in new}) as alone:
            later = [] if alone else new  # optimized once they serve (see _load)
            for v in new:
                self._set(name, ModelState(name, data, serving, dict(failed), frozenset(new)))
                try:
                    servables[v] = self._load(name, v, on_disk[v], data, alone)
                except Exception as e:
                    failed[v] = f"{type(e).__name__}: {e}" if not isinstance(e, WorkbenchError) else str(e)
                    self._failed_at[(name, v)] = _mtime(on_disk[v])
                    self.metrics.load_failures.inc(labels(name, v))
                    log.error(
                        "model %s version %s could not be loaded, skipped (%s); still serving %s",
                        name,
                        v,
                        failed[v],
                        sorted(serving) or "nothing",
                    )
        if self.peers is not None:
            for v in new:
                self.peers.announce(name, v, _mtime(on_disk[v]), failed.get(v))
        if self.peers is not None and new:
            # Every worker process swaps at once, and serves a version only if every one of them loaded it.
            for v, problem in self.peers.wait(name, {v: _mtime(on_disk[v]) for v in new}, self._stop).items():
                if v in servables:
                    self._retire(name, servables.pop(v))
                    failed[v] = problem
                    self._failed_at[(name, v)] = _mtime(on_disk[v])
                    log.error("model %s version %s is not served: %s", name, v, problem)
        keep = {v: s for v, s in servables.items() if v in wanted}
        unconfirmed = frozenset(v for v in new if v in keep) if self.peers is not None else frozenset()
        state = ModelState(name, data, keep, failed, unconfirmed=unconfirmed)
        self._set(name, state)  # the swap: requests from now on resolve against the new state
        if unconfirmed and self.peers is not None:
            # Report the new versions available only once every worker has swapped them in (a few ms later), so
            # that a client that saw one available (promote waits for that) gets it from whichever worker it asks.
            stamps = {v: _mtime(on_disk[v]) for v in unconfirmed}
            for v, stamp in stamps.items():
                self.peers.announce(name, v, stamp, None, phase="swapped")
            self.peers.wait(name, stamps, self._stop, phase="swapped", timeout=10)
            state = ModelState(name, data, keep, failed)
            self._set(name, state)
        for v, s in servables.items():
            if v not in keep:
                self._retire(name, s)
        if old is not None:
            for v, s in old.servables.items():
                if v not in keep and v not in servables:
                    self._retire(name, s)
        live = state.live()
        if live is not None:
            self.metrics.live.set(labels(name), live)
        log.info("model %s: serving versions %s, live %s", name, sorted(keep), live)
        for v in later:
            if v in keep:
                self._optimize(keep[v])

    def _wanted(self, data: dict[str, Any], on_disk: dict[int, Path], failed: dict[int, str]) -> set[int]:
        refs = {int(v) for v in data["labels"].values()}
        if data.get("live") is not None:
            refs.add(int(data["live"]))
        for ref in data.get("traffic") or {}:
            v = int(ref) if str(ref).isdigit() else data["labels"].get(ref)
            if v is not None:
                refs.add(int(v))
        newest = [v for v in sorted(on_disk, reverse=True) if v not in failed][: self.keep]
        return (refs | set(newest)) & set(on_disk)

    def _aside(self, name: str, versions: dict[int, int]) -> Any:
        """Where other worker processes serve this server's clients too, and clients are being served: wait for
        the workers before this one to load ``versions`` (version -> folder mtime), then pass this worker's
        connections to the others while it loads (see workers.Balancer). Yields whether it has no clients left."""
        peers, balancer = self.peers, self.balancer
        if not versions or peers is None or peers.count < 2 or balancer is None or not balancer.busy():
            return nullcontext(False)
        peers.wait(name, versions, self._stop, workers=range(peers.index))
        return balancer.aside()

    def _load(self, name: str, version: int, path: Path, data: dict[str, Any], alone: bool = False) -> Servable:
        t0 = time.perf_counter()
        fw_name = _framework_of(path, data.get("versions", {}).get(str(version), {}))
        framework = frameworks.get_framework(fw_name)
        self.settle(framework)

        def load() -> tuple[Runtime, bool]:
            runtime = framework.load(path)
            try:
                # no client of this process waits meanwhile (else: once it serves, see _optimize)
                optimized = alone and runtime.optimize()
                self._warm(runtime)
            except Exception:
                runtime.close()
                raise
            return runtime, optimized

        if not alone:
            with self._yielding():
                runtime, optimized = load()
        elif framework.loads_without_new_threads:
            # Other worker processes serve every client meanwhile: load flat out, but only on CPU time they leave.
            runtime, optimized = on_low_priority_thread(load)
        else:
            runtime, optimized = load()
        lab = labels(name, version)
        batcher = Batcher(
            runtime.predict,
            self.max_batch,
            self.max_wait,
            name=f"batch-{name}-{version}",
            on_batch=lambda n: self.metrics.batch_size.observe(lab, n),
        )
        lane = self._lane(name, version, runtime)
        seconds = time.perf_counter() - t0
        self.metrics.load_seconds.observe(labels(name), seconds)
        self.metrics.loaded.set(lab, 1)
        done = ", optimized for serving" if optimized else ""
        log.info("model %s version %s loaded%s and warmed up in %.2f s", name, version, done, seconds)
        return Servable(name, version, fw_name, runtime, batcher, lane)

    def _warm(self, runtime: Runtime) -> None:
        """A few predictions of the warm-up batch sizes, so that the first requests meet no first-call costs."""
        for rows in sorted({min(b, self.max_batch) for b in self.warmup_batches}):
            sample = runtime.signature.sample(rows)
            check_outputs(runtime.signature, sample, runtime.predict(sample))

    def _optimize(self, servable: Servable) -> None:
        """Make a version that serves faster (Runtime.optimize: TensorFlow folds its variables in, ~0.1 s for
        LeNet-5), in slices while requests are coming in; off the way to its first answer, so promote-to-live
        does not wait for it. Requests keep running on the version as it was meanwhile."""
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

    def _lane(self, name: str, version: int, runtime: Runtime) -> Lane | None:
        """The version's queue and batch thread in the native front end, where it can serve this model."""
        if self.native is None:
            return None
        from workbench.serving import native

        shape = native.plan(runtime.signature)
        if shape is None:
            log.info("model %s version %s: its signature is served by the Python path only", name, version)
            return None

        def stamp() -> None:
            self.last_request = time.monotonic()

        return native.Lane(
            name,
            version,
            runtime.signature,
            runtime.predict,
            shape,
            max_batch=self.max_batch,
            max_wait=self.max_wait,
            metrics=self.metrics,
            gather=self.gather,
            processes=self.peers.count if self.peers is not None else 1,
            on_batch=stamp,
            prediction_log=self.prediction_log,
            log_sample=self.log_sample,
        )

    def _yielding(self) -> Any:
        """Load in slices while requests are coming in (any in the last second), so that they keep their latency.

        Loading a version runs Python and TensorFlow's C++ on the watcher thread for ~0.1-0.2 s (LeNet); left
        alone it keeps a CPU and the GIL most of that time, and on a small machine the requests of every other model
        wait behind it (p99 up 4-8x during a swap under load, measured by bench/serve_hotswap). Pausing 2 ms
        after each 1 ms of loading keeps that p99 within ~1.5x; the load takes ~0.5 s longer, so an idle server
        (nothing to protect) loads at full speed."""
        run_ms, _, pause_ms = settings.SERVE_LOAD_YIELD.get().partition(",")
        run_s, pause_s = float(run_ms or 0) / 1000, float(pause_ms or 0) / 1000
        if run_s <= 0 or pause_s <= 0 or time.monotonic() - self.last_request > 1.0:
            return nullcontext()
        return stepping_aside(run_s, pause_s)

    def settle(self, framework: Framework) -> None:
        """Import ``framework`` and pay its first-use costs (a tiny model through it), then move every object alive
        to the garbage collector's permanent generation. Without this a full collection walks TensorFlow's ~330k
        objects: ~240 ms with the GIL held, a stall for every request in flight, and loading a version triggers
        one (measured: bench/serve_hotswap). After it, a full collection walks only the loaded models' objects
        (a few ms for LeNet), and the versions swapped out are still collected. Watcher thread only."""
        if framework.name in self._settled:
            return
        framework.prepare()
        self._settled.add(framework.name)
        problem = framework.warm()
        if problem:
            log.warning("%s", problem)
        gc.collect()
        gc.freeze()

    def _retire(self, name: str, servable: Servable) -> None:
        self.metrics.loaded.remove(labels(name, servable.version))
        servable.retire()

    def _set(self, name: str, state: ModelState | None) -> None:
        """Replace the whole table (copy on write), so request handlers never see it change under them."""
        models = dict(self._models)
        if state is None:
            models.pop(name, None)
        else:
            models[name] = state
        self._models = models
        if self.native is not None:
            self.native.publish(models)

    def _drop(self, name: str) -> None:
        state = self._models[name]
        self._set(name, None)
        self._fingerprints.pop(name, None)
        for s in state.servables.values():
            self._retire(name, s)
        self.metrics.live.remove(labels(name))


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
        meta: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
    except OSError:
        meta = None
    return meta, tuple(sorted((v, _mtime(p)) for v, p in version_dirs(model_dir).items()))
