# histocompare: the two set-up commands are `make demo` and `make test`; both create .venv if absent.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
HC := $(VENV)/bin/histocompare
STAMP := $(VENV)/.installed-$(shell cat requirements.txt pyproject.toml | sha256sum | cut -c1-12)
PRESET ?= demo
EXPERIMENT ?= demo
PORT ?= 8501
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: install demo pipeline dashboard screenshots test bench bench-quick bench-scale bench-baselines gpu-check lint browser clean

# The pinned set first (the tested versions), then this checkout as an editable package: the `histocompare` command.
$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	@rm -f $(VENV)/.installed-*; touch $(STAMP)

install: $(STAMP)

## Command 1: install, then the dashboard at once and the whole pipeline on SYNTHETIC demo data behind it
## (the Pipeline page follows it; Ctrl-C stops both; run it again to resume).
demo: install
	$(HC) demo --config pipeline/configs/demo.toml --config pipeline/configs/demo_image_level.toml --port $(PORT)

pipeline: install
	$(HC) run --config $(PRESET)

dashboard: install
	$(HC) dashboard --experiment $(EXPERIMENT) --port $(PORT)

## Screenshots of every page (docs/screenshots/*.png) from the demo artifacts (`make demo` first); needs chromium.
screenshots: install
	$(PY) -m tools.screenshots --experiment $(EXPERIMENT) --out docs/screenshots

## Command 2: install and run the test suite (the browser test needs Debian's chromium: `make browser`).
# Everything the README calls tested runs here: chromium (browser tests), staintools + spams (the Vahadane
# cross-check) and the `slow` multi-worker test, alone in a second call (its two TF processes want both cores).
test: install
	-@$(MAKE) --no-print-directory browser
	-@$(MAKE) --no-print-directory bench-baselines
	PYTHONPATH=$(CURDIR) $(PY) -m pytest -n 2 --dist loadfile -m "not slow"  # the tests exercise the checkout itself; two processes, one per core; a file's module fixtures stay in one
	PYTHONPATH=$(CURDIR) $(PY) -m pytest -m slow

browser:
	@test -x /usr/bin/chromium || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
		(apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || \
		echo "chromium not installed: the browser test will be skipped"; }

# Optional Vahadane baseline for the benchmark: archived staintools + the spams-bin wheel, kept out of .venv.
BENCH_EXTRA := .bench-extra
BENCH_STAMP := $(BENCH_EXTRA)/.installed-2
bench-baselines: $(BENCH_STAMP)
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --target $(BENCH_EXTRA) staintools==2.1.2 \
		spams-bin==2.6.14 opencv-python-headless==5.0.0.93 matplotlib==3.11.2 contourpy==1.3.3 cycler==0.12.1 \
		fonttools==4.68.0 kiwisolver==1.5.1 pyparsing==3.3.3
	@rm -f $(BENCH_EXTRA)/.installed-*; touch $(BENCH_STAMP)

bench: install
	PYTHONPATH=$(CURDIR):$(CURDIR)/$(BENCH_EXTRA) $(PY) -m tools.bench

bench-quick: install
	PYTHONPATH=$(CURDIR):$(CURDIR)/$(BENCH_EXTRA) $(PY) -m tools.bench --quick

## Growth with the data: planted BreakHis-shaped experiments at 1x and 10x (SCALE_SIZES="1 10 40" adds 40x), no training.
SCALE_SIZES ?= 1 10
bench-scale: install
	$(PY) tools/bench_scale.py --sizes $(SCALE_SIZES)

## On a GPU machine: the paper recipe for V1-B0 and V2-B0, float32 vs mixed precision vs mixed + XLA (says so without a GPU).
gpu-check: install
	$(PY) -m tools.gpu_check

lint: install
	$(VENV)/bin/ruff check pipeline dashboard pages tests tools histocompare docs

clean:
	rm -rf artifacts/demo artifacts/demo_image_level artifacts/sample artifacts/bench artifacts/bench-scale data/demo
