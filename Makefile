# Two entry points: `make reproduce` (the headline figure) and `make test` (the suite).
# Both build .venv themselves from nothing but Python 3.11+ and make.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: reproduce figures test venv bench clean

$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints.txt -e .
	touch $@

# torch is pinned to the CPU wheel that lies on these machines; installing it
# first stops a looser requirement from pulling a multi-GB CUDA build.
$(TEST_STAMP): $(STAMP)
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -c constraints.txt -e '.[test,torch,data]'
	touch $@

venv: $(STAMP)

reproduce: $(STAMP)
	$(PY) experiments/gradient_norms.py

# Every figure embedded in the README, each regenerated from its own script and saved data.
FIGURES := spectral_sweep clipping layernorm_placement
figures: reproduce $(TEST_STAMP)
	for e in $(FIGURES); do $(PY) experiments/$$e.py --out results/$$e && cp results/$$e/$$e.png docs/figures/ || exit 1; done
	$(PY) experiments/transformer_copy.py --out results/transformer_copy && cp results/transformer_copy/loss_curve.png docs/figures/transformer_copy_loss.png
	$(PY) experiments/long_range.py --out results/long_range --no-progress && cp results/long_range/learning_curves.png docs/figures/long_range.png

test: $(TEST_STAMP)
	$(PY) -m pytest -n 2 --durations=15 -q

bench: $(TEST_STAMP)
	$(PY) benchmarks/recurrent.py
	$(PY) benchmarks/attention.py
	$(PY) benchmarks/state_gradients.py

clean:
	rm -rf $(VENV) build *.egg-info
