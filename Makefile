# Thin wrapper: each target is one command of the README.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup test test-fast demo clevr train bench sim clean
setup:
	./setup.sh

test:
	$(PY) -m pytest -q test

demo:
	$(VENV)/bin/essen-demo

clean:
	rm -rf build .pytest_cache
