.PHONY: setup up down test test-fast lint docs lock bench
setup:  ## create/update .venv
	bash scripts/setup.sh
up:     ## set up and start the workbench
	bash scripts/up.sh
down:
	.venv/bin/workbench down
test:   ## set up and run every test
	bash scripts/test.sh
test-fast:  ## the fast tier: every test not marked slow (no training, no TensorFlow), a few minutes
	bash scripts/test.sh -m "not slow" -q
lint:   ## ruff check, ruff format --check, mypy (what CI runs before the tests)
	bash scripts/lint.sh
docs:   ## build the documentation site into site/ (warnings are errors)
	NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict
# The lock files the set-up and the images install with (pip -c): refresh after changing pyproject.toml's
# dependencies or requirements/mxnet.in, then run `make setup` and the tests. --upgrade takes the newest releases
# the ranges allow; without UPGRADE=1 the current pins are kept where they still fit. Linux x86_64, Python 3.11.
LOCK_ARGS = --python-version 3.11 --python-platform x86_64-manylinux_2_28 --custom-compile-command "make lock" \
	$(if $(UPGRADE),--upgrade)
lock:   ## re-resolve requirements/*lock.txt: .venv and the images, .venv-mxnet, the tensorboard image
	.venv/bin/uv pip compile pyproject.toml --extra tensorflow --extra pytorch --extra jupyter --extra dev \
		--extra docs --extra kubernetes --extra postgres --extra s3 $(LOCK_ARGS) -o requirements/lock.txt
	.venv/bin/uv pip compile requirements/mxnet.in $(LOCK_ARGS) -o requirements/mxnet-lock.txt
	.venv/bin/uv pip compile requirements/tensorboard.in $(LOCK_ARGS) -o requirements/tensorboard-lock.txt
bench:  ## run the benchmarks (prints figures)
	bash scripts/setup.sh && .venv/bin/python -m bench
