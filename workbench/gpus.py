"""GPUs on this machine and which replica gets which."""

from __future__ import annotations

import shutil
import subprocess

from workbench import settings
from workbench.errors import ResourceError


def count() -> int:
    """GPUs visible here: ``WORKBENCH_GPUS`` if set, else what ``nvidia-smi -L`` lists (0 without it)."""
    configured = settings.GPU_COUNT.get()
    if configured:
        return int(configured)
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


def assign(gpus_per_replica: int, replicas: int) -> list[str]:
    """``CUDA_VISIBLE_DEVICES`` for each of ``replicas`` replicas, disjoint; "" means no GPU.

    Raises :class:`ResourceError` when the machine has fewer GPUs than asked for.
    """
    if gpus_per_replica == 0:
        return [""] * replicas
    have = count()
    need = gpus_per_replica * replicas
    if need > have:
        raise ResourceError(
            f"the job asks for {gpus_per_replica} GPU(s) for each of {replicas} replica(s), {need} in all, "
            f"but this machine has {have}; lower gpus or workers"
        )
    return [",".join(str(i * gpus_per_replica + k) for k in range(gpus_per_replica)) for i in range(replicas)]
