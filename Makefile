# torchbridge: `make demo` runs the main job end to end, `make test` runs every check.
# Both set up .venv first on a fresh machine.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
FATOU  := $(VENV)/bin/fatou

# torch + torchvision that import together. pyproject.toml keeps a lower bound
# only; the set-up pins a pair known to work on the build machines (x86_64: the
# pair on local disk; aarch64: a CPU build). Override with TORCH_PIN="...".
ifeq ($(shell uname -m),aarch64)
TORCH_PIN ?= torch==2.9.1 torchvision==0.24.1
else
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1
endif

# Tests and the demo never wait on a model hub.
export HF_HUB_OFFLINE ?= 1
export TORCHBRIDGE_OFFLINE ?= 1
export PYTHON_JULIAPKG_OFFLINE ?= yes

.PHONY: setup demo test test-python lint-python lint-julia format-julia test-julia bench bench-julia bench-check notebook clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet $(TORCH_PIN)
	$(PIP) install --quiet -e '.[all,dev]'
	touch $@

demo: setup
	$(PY) -m torchbridge.demo

test: lint-python lint-julia test-python

test-python: setup
	$(PY) -m pytest

lint-python: setup
	$(VENV)/bin/ruff check python tests benchmarks examples
	$(VENV)/bin/ruff format --check python tests benchmarks examples

lint-julia: setup
	$(FATOU) lint --color never julia benchmarks/julia examples/finetune.jl examples/lux_finetune.jl examples/finetune_large.jl
	$(FATOU) format --check --color never julia benchmarks/julia examples/finetune.jl examples/lux_finetune.jl examples/finetune_large.jl

format-julia: setup
	$(FATOU) format julia benchmarks/julia examples/finetune.jl examples/lux_finetune.jl examples/finetune_large.jl

# The Julia suite, wherever a `julia` exists. With .venv set up, PythonCall
# uses its Python (torch, timm and this package installed) instead of
# resolving a Conda environment; without it, CondaPkg installs julia/CondaPkg.toml.
JULIA ?= julia
JULIA_PYTHON_ENV = $(if $(wildcard $(PY)),JULIA_CONDAPKG_BACKEND=Null JULIA_PYTHONCALL_EXE=$(abspath $(PY)))

test-julia:
	$(JULIA_PYTHON_ENV) $(JULIA) --project=julia -e 'using Pkg; Pkg.test()'

# Julia-side figures beside plain torch (benchmarks/julia/run.jl); a report, not a test.
bench-julia: setup
	$(JULIA_PYTHON_ENV) $(JULIA) --project=benchmarks/julia -e 'using Pkg; Pkg.develop(path = "julia"); Pkg.instantiate()'
	$(JULIA_PYTHON_ENV) $(JULIA) --project=benchmarks/julia benchmarks/julia/run.jl benchmarks/julia/results.json

bench: setup
	$(PY) benchmarks/run.py --json benchmarks/results.json

# The last figures against benchmarks/baseline.json (the previous ones): one
# line per figure that got worse by more than its noise; `--update` resets it.
bench-check: setup
	$(PY) benchmarks/check.py

notebook: setup
	$(VENV)/bin/jupytext --sync examples/mixed_notebook.ipynb

clean:
	rm -rf $(VENV) demo-output benchmarks/results.json .pytest_cache
