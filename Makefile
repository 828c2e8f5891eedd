.PHONY: setup up down test lint bench
setup:  ## create/update .venv
	bash scripts/setup.sh
up:     ## set up and start the workbench
	bash scripts/up.sh
down:
	.venv/bin/workbench down
test:   ## set up and run every test
	bash scripts/test.sh
lint:
	.venv/bin/ruff check workbench tests bench examples && .venv/bin/ruff format --check workbench tests bench examples
bench:  ## run the benchmarks (prints figures)
	bash scripts/setup.sh && .venv/bin/python -m bench
