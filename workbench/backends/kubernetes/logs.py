"""Per-replica line iterators over pod logs, with the same contract as the local backend's.

Each iterator yields the complete lines written since its last round, then
``None`` ("nothing new now"); iterating again starts a new round. A replica
restarted by its Job has one pod per attempt: their logs follow each other,
separated by the marker the local backend writes. Once a replica's pods are
gone (cancelled, or expired by the Job's TTL) the copy the entrypoint wrote
into the workspace is read instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from workbench.backends.kubernetes.client import Cluster
from workbench.backends.kubernetes.manifests import selector
from workbench.backends.kubernetes.state import pod_finished, replica_pods


def replica_lines(
    connect: Callable[[], Cluster], run_id: str, role: str, index: int, saved: Path
) -> Iterator[str | None]:
    """Lines of replica ``role``-``index``, from its pods while they exist, else from ``saved``."""
    reader = _ReplicaLog(run_id, role, index, saved)
    while True:
        with connect() as cluster:  # closed before yielding: a paused iterator holds no connection
            lines = reader.poll(cluster)
        yield from lines
        yield None


class _ReplicaLog:
    def __init__(self, run_id: str, role: str, index: int, saved: Path):
        self.run_id, self.role, self.index, self.saved = run_id, role, index, saved
        self.shown: dict[str, int] = {}  # pod name -> lines already yielded
        self.saved_offset = 0

    def poll(self, cluster: Cluster) -> list[str]:
        pods = replica_pods(cluster.pods(selector(self.run_id, self.role)), self.role, self.index)
        if not pods:
            return [] if self.shown else self._read_saved()
        lines: list[str] = []
        for pod in pods:
            name = pod["metadata"]["name"]
            text = cluster.pod_log(name)
            if text is None:
                continue
            if name not in self.shown:
                self.shown[name] = 0
                if len(self.shown) > 1:
                    restart = len(self.shown) - 1
                    lines.append(f"===== restart {restart}: attempt {restart + 1} =====")
            complete = _complete_lines(text, whole=pod_finished(pod))
            lines.extend(complete[self.shown[name] :])
            self.shown[name] = len(complete)
        return lines

    def _read_saved(self) -> list[str]:
        try:
            with open(self.saved, "rb") as f:
                f.seek(self.saved_offset)
                data = f.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1  # a partial last line waits for the next round
        self.saved_offset += end
        return data[:end].decode(errors="replace").splitlines()


def _complete_lines(text: str, whole: bool) -> list[str]:
    """Lines ended by a newline; the unterminated tail too once the pod has finished writing."""
    lines = text.split("\n")
    tail = lines.pop()
    return lines + [tail] if whole and tail else lines
