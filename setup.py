"""Build script for the one C extension; everything else is declared in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        # The model server's predict-body decoder and native front end, and the benchmarks' C load generator.
        # Optional: without a C compiler workbench installs, and the server serves every request in Python
        # (workbench.serving.http, .fastjson), slower.
        Extension(
            "workbench.serving._native",
            ["workbench/serving/_native.c", "workbench/serving/_frontend.c", "workbench/serving/_loadgen.c"],
            depends=["workbench/serving/_decode.h"],
            optional=True,
            extra_compile_args=["-O3"],
        ),
    ],
)
