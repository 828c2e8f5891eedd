"""Benchmarks that print figures (not timed tests).

Each ``bench/<name>.py`` whose name does not start with ``_`` is one
benchmark, runnable as ``python -m bench.<name> [flags]`` with a ``main(argv)``
entry point. ``python -m bench`` runs every one it finds (or those named), each
in a process of its own; figures go to stdout and are recorded by hand in
``bench/RESULTS.md``.
"""
