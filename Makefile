# Each target is one command of the README. Variables can be overridden: make clevr CLEVR=/data/CLEVR_v1.0
VENV ?= .venv
PY := $(VENV)/bin/python
CLEVR ?= ../shared/data/clevr-dev
export MUJOCO_GL ?= egl
export HF_HUB_OFFLINE = 1

.PHONY: setup test demo clevr train eval sim bench clean
setup:
	./setup.sh

test:
	$(PY) -m pytest -q test

# The main job: fresh rendered scenes -> bag -> replayed live through the node -> report.
demo:
	$(VENV)/bin/essen-demo

# Real CLEVR renders from a folder (clevr-dev style manifest or a CLEVR v1.0 download).
clevr:
	$(VENV)/bin/essen-demo --clevr $(CLEVR)

# The default model's whole pipeline (data -> pretrain -> fine-tune), about an hour on 2 cores.
train:
	scripts/train_default.sh

# Scores of the shipped model: synthetic test set (rendered, seed 3) and the CLEVR folder.
eval:
	[ -f data/test/annotations.jsonl ] || $(VENV)/bin/essen-datagen --out data/test --images 500 --seed 3 --workers 2 --vary-size
	$(VENV)/bin/essen-eval --data data/test --out reports/synthetic-test
	$(VENV)/bin/essen-eval --data $(CLEVR) --out reports/clevr-dev

sim:
	$(VENV)/bin/essen-scorer --launch --ros-args -p duration:=60.0

bench:
	$(PY) scripts/bench_model.py
	$(PY) scripts/bench_datagen.py
	$(PY) scripts/bench_node.py

clean:
	rm -rf build .pytest_cache
