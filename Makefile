# Set-up and everyday commands. `make demo` and `make test` set up .venv/ on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-slurm lint typecheck bench clean-runs

setup: $(STAMP)

# torch goes first, pinned exactly, so that nothing later re-resolves it to a CUDA build. DeepSpeed's CPU ops
# are compiled here, at set-up, not inside the first training run (into .venv/torch_extensions/; a lock left
# by a killed build is cleared, and the build is given 15 minutes at most).
$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	RANK=0 WORLD_SIZE=1 timeout 900 $(PY) -c 'from action_launch.training.engine import warm_up; warm_up()'
	touch $(STAMP)

# The main job on its embedded defaults: generated H.264 clips, local process, SQLite MLflow under runs/.
# DEMO_* let the tests run the same recipe small.
DEMO_DATA ?= data/synthetic
DEMO_SET ?= --num-train 640 --num-val 128
DEMO_ARGS ?=
demo: setup
	$(PY) -m action_launch.datasets.synthetic $(DEMO_DATA) $(DEMO_SET)
	$(PY) launch/train.py --config configs/demo.yaml data.root=$(DEMO_DATA) $(DEMO_ARGS)

# The whole suite, the real-cluster Slurm tests (marker `slurm`) included: they need root and the Debian
# packages of slurm/testcluster/cluster.sh (which apt-installs them when missing; .ci/run does it first).
# The cluster runs in a network namespace of its own, so its daemons listen on no interface of this
# machine. test-slurm runs only those tests; `pytest -m "not slurm"` all the others. `lint` (mypy, ruff) runs first.
test: setup lint
	$(PY) -m pytest tests

test-slurm: setup
	$(PY) -m pytest tests -m slurm

# mypy cannot follow setup.cfg's package_dir (launch/ is action_launch, models/ and datasets/ sit inside it),
# so it checks a tree of links under build/typecheck that has the installed package's shape.
typecheck: setup
	rm -rf build/typecheck && mkdir -p build/typecheck/action_launch
	ln -s $(CURDIR)/launch/* build/typecheck/action_launch/
	ln -s $(CURDIR)/models $(CURDIR)/datasets build/typecheck/action_launch/
	cd build/typecheck && $(abspath $(PY)) -m mypy --config-file $(CURDIR)/pyproject.toml --cache-dir ../mypy_cache -p action_launch

lint: typecheck
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

bench: setup
	$(PY) bench/gpu_throughput.py
	$(PY) bench/data_pipeline.py

clean-runs:
	rm -rf runs
