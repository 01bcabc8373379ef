# Two entry points: `make demo` and `make test`. Each creates .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean default-psf default-model

$(STAMP): pyproject.toml
	test -x $(BIN)/pip || $(PYTHON) -m venv --clear $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/denseloc demo

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_simulator.py

# The bundled PSF calibration (src/denseloc/data/): regenerate from the EPFL 2016 beads.
default-psf: $(STAMP)
	$(BIN)/denseloc calibrate ../shared/data/beads_epfl2016/beads_as.tif --z-step-nm 10 \
		--pixel-size-nm 100 --camera emccd --out src/denseloc/data/psf_epfl_beads_as.h5 \
		--astigmatic src/denseloc/data/psf_epfl_beads_as_astigmatic.yaml

# The bundled network (src/denseloc/data/default_model/): 60 CPU-minutes of training on the
# benchmark setting. Runs are deterministic for a seed except for how many steps fit in the
# time budget on the machine at hand. The bundled files come from the same 60-minute run made
# by benchmarks/bench_training.py (--out-model, evaluations outside the budget) and
# benchmarks/finish_model.py: see training_default_he_60min*.md in benchmarks/results/.
MODEL_FILES := config.yaml model.yaml weights.pt training_log.csv curves.png
default-model: $(STAMP)
	$(BIN)/denseloc train benchmarks/configs/epfl_as.yaml --out build/default_model \
		--minutes 60 --device cpu
	mkdir -p src/denseloc/data/default_model
	for f in $(MODEL_FILES); do cp build/default_model/$$f src/denseloc/data/default_model/; done

clean:
	rm -rf $(VENV) demo_output
