# Two commands: `make demo` (set up + run the main job) and `make test` (the whole suite).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
REQS   := requirements/cpu.txt requirements/common.txt requirements/test.txt requirements/torchrec.txt
STAMP  := $(VENV)/.installed-$(shell cat $(REQS) setup.cfg pyproject.toml | sha1sum | cut -c1-12)
VENV16 ?= .venv-torchrec16
PY16   := $(VENV16)/bin/python
REQS16 := requirements/cpu-torchrec16.txt requirements/common.txt requirements/test.txt requirements/torchrec16.txt
STAMP16 := $(VENV16)/.installed-$(shell cat $(REQS16) setup.cfg pyproject.toml | sha1sum | cut -c1-12)
DEMO_DIR ?= demo
CHECK_PYTHON = @$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "recsys-mtl: the pinned CPU stack needs Python 3.11, found " + sys.version.split()[0] + " (set PYTHON=/path/to/python3.11)")'

.PHONY: setup demo test test-torchrec16 bench clean

setup: $(STAMP)

# Re-installs only when $(REQS), setup.cfg or pyproject.toml change.
$(STAMP):
	$(CHECK_PYTHON)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements/cpu.txt -r requirements/test.txt
	$(PY) -m pip install -q --no-deps -r requirements/torchrec.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) -c "import torchrec, fbgemm_gpu, torch; print('recsys-mtl env ready: torch', torch.__version__, 'torchrec', torchrec.__version__, 'fbgemm', fbgemm_gpu.__version__)"
	rm -f $(VENV)/.installed-* && touch $@

demo: setup
	$(VENV)/bin/recsys-mtl demo --out $(DEMO_DIR)

test: setup
	$(PY) -m pytest -q

# The suite on the oldest stack the code is kept working on (torch 2.11 + fbgemm 1.6.0 + torchrec 1.6.1, the GPU
# machine's pair) in its own venv, on the CPU. Not part of CI: PyPI's torch 2.11 is a 4.6 GB CUDA build.
test-torchrec16: $(STAMP16)
	$(PY16) -m pytest -q

$(STAMP16):
	$(CHECK_PYTHON)
	test -x $(PY16) || $(PYTHON) -m venv $(VENV16)
	$(PY16) -m pip install -q --upgrade pip 'setuptools>=70.1,<82'  # torch 2.11 wants <82; 70.1 builds wheels
	$(PY16) -m pip install -q -r requirements/cpu-torchrec16.txt -r requirements/test.txt
	$(PY16) -m pip install -q --no-deps -r requirements/torchrec16.txt
	$(PY16) -m pip install -q --no-deps --no-build-isolation -e .
	rm -f $(VENV16)/.installed-* && touch $@

bench: setup
	$(VENV)/bin/recsys-mtl bench data

clean:
	rm -rf $(VENV) $(VENV16) $(DEMO_DIR)
