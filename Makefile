# Each target is one command of the README. Variables can be overridden: make clevr CLEVR=/data/CLEVR_v1.0
VENV ?= .venv
PY := $(VENV)/bin/python
CLEVR ?= ../shared/data/clevr-dev
export MUJOCO_GL ?= egl
export HF_HUB_OFFLINE = 1

.PHONY: setup test demo clevr train data sim bench clean
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

sim:
	$(VENV)/bin/essen-scorer --launch --ros-args -p duration:=60.0

bench:
	$(PY) scripts/bench_model.py
	$(PY) scripts/bench_datagen.py
	$(PY) scripts/bench_node.py

clean:
	rm -rf build .pytest_cache
