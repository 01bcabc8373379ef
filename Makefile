# Two entry points: `make demo` and `make test`. Each creates .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean default-psf default-model

# A .venv without pip, or made by a Python older than 3.11 in an earlier try, is rebuilt.
$(STAMP): pyproject.toml
	(test -x $(BIN)/pip && $(BIN)/python -c 'import sys; sys.exit(sys.version_info < (3, 11))') \
		|| $(PYTHON) -m venv --clear $(VENV)
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

# The bundled PSF calibration (src/denseloc/data/): regenerate from the EPFL 2016 beads, smoothed
# along z as the beads choose. psf_epfl_beads_as.h5, the earlier calibration (a fixed 60 nm of
# smoothing) that the bundled network was trained on, stays as it is.
default-psf: $(STAMP)
	$(BIN)/denseloc calibrate ../shared/data/beads_epfl2016/beads_as.tif --z-step-nm 10 \
		--pixel-size-nm 100 --camera emccd --out src/denseloc/data/psf_epfl_beads_as_v2.h5 \
		--astigmatic src/denseloc/data/psf_epfl_beads_as_astigmatic.yaml

# The bundled network (src/denseloc/data/default_model/): 57 epochs (456,000 samples) of
# training on the benchmark setting (of its day: see below), five context frames; 1.5 to 2 hours
# on 2 cores. A fixed number of epochs, not a time budget, so the same command gives the same
# model on any machine (up to the order of floating-point sums in threads) and a busy machine
# only slows it. The three-frame model it replaced reached 448,640 samples in its 60-minute
# budget. Score it with benchmarks/finish_model.py (benchmarks/README.md, "Running them"):
# training_default_v2_57ep*.md. The last
# step measures how its errors correlate across frames, for --group (grouping_bundled.md).
# The PSF is psf_epfl_beads_as_v2.h5, which benchmarks/configs/epfl_as.yaml names since
# 2026-12-03 (the model bundled before that evening used psf_epfl_beads_as.h5).
MODEL_FILES := config.yaml model.yaml weights.pt training_log.csv curves.png
default-model: $(STAMP)
	$(BIN)/denseloc train benchmarks/configs/epfl_as.yaml --out build/default_model \
		--epochs 57 --device cpu
	mkdir -p src/denseloc/data/default_model
	for f in $(MODEL_FILES); do cp build/default_model/$$f src/denseloc/data/default_model/; done
	$(BIN)/python benchmarks/bench_grouping.py benchmarks/configs/epfl_as.yaml --record

clean:
	rm -rf $(VENV) demo_output
