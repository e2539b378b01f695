# Two commands: `make demo` (set up + run the main job) and `make test` (the whole suite).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat requirements/*.txt setup.cfg pyproject.toml | sha1sum | cut -c1-12)
DEMO_DIR ?= demo

.PHONY: setup demo test bench clean

setup: $(STAMP)

# Re-installs only when requirements/, setup.cfg or pyproject.toml change.
$(STAMP):
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "recsys-mtl: the pinned CPU stack needs Python 3.11, found " + sys.version.split()[0] + " (set PYTHON=/path/to/python3.11)")'
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

bench: setup
	$(VENV)/bin/recsys-mtl bench data

clean:
	rm -rf $(VENV) $(DEMO_DIR)
