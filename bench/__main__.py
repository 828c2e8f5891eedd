"""``python -m bench [NAME ...] [-- FLAGS]``: run benchmarks, each in its own process.

With no NAME, every module ``bench/<name>.py`` not starting with ``_`` runs, in
name order. FLAGS after ``--`` go to each benchmark run (e.g. ``python -m bench
launch_overhead -- --epochs 1 --limit 1000`` for a smoke run). ``--list``
prints the names. The exit status is non-zero when any benchmark failed.
"""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path


def discover() -> list[str]:
    """Names of the benchmark modules in this package."""
    return sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)]) if not m.name.startswith("_"))


def main(argv: list[str]) -> int:
    names, flags = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    found = discover()
    if names == ["--list"]:
        print("\n".join(found))
        return 0
    unknown = sorted(set(names) - set(found))
    if unknown:
        print(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(found)}", file=sys.stderr)
        return 2
    failed = []
    for name in names or found:
        print(f"=== bench.{name}", flush=True)
        code = subprocess.call([sys.executable, "-m", f"bench.{name}", *flags], cwd=Path(__file__).parent.parent)
        if code:
            failed.append(name)
            print(f"=== bench.{name} failed with exit status {code}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
