# The two commands a fresh machine needs:
#   make run    set everything up, then run the embedded offline default study
#   make test   set everything up, then run the test suite
VENV ?= .venv

.PHONY: setup run test bench
setup:
	bash scripts/setup.sh

run: setup
	$(VENV)/bin/pactmerge run

test: setup
	@df -h . "$${TMPDIR:-/tmp}" | sed 's/^/disk: /'  # the suite needs about 5.5 GB free under /tmp at its peak
	$(VENV)/bin/python -m pytest -q

bench: setup
	$(VENV)/bin/python benchmarks/merge_speed.py
	$(VENV)/bin/python benchmarks/data_throughput.py
	$(VENV)/bin/python benchmarks/train_throughput.py
