"""Build script for the one C extension; everything else is declared in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        # The model server's predict-body decoder. Optional: without a C compiler workbench installs and the
        # server decodes in Python (workbench.serving.fastjson), about 40 us slower per 28x28 image.
        Extension("workbench.serving._native", ["workbench/serving/_native.c"], optional=True,
                  extra_compile_args=["-O2"]),
    ],
)
