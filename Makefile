.PHONY: setup up down test lint docs bench
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
docs:   ## build the documentation site into site/ (warnings are errors)
	NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict
bench:  ## run the benchmarks (prints figures)
	bash scripts/setup.sh && .venv/bin/python -m bench
