# The two commands of the README. Everything else is reached through these.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install bench bench-pages bench-pipeline bench-state bench-coder bench-model bench-pubsub evaluate clean pubsub-deps

# The local Pub/Sub server (Google's pstest) builds from two Debian packages. Installed when
# this user can (root or passwordless sudo, as in CI); a no-op when they are there. Without
# them the Pub/Sub tests skip with the reason, except under CI=true, where they fail.
PSTEST_SRC := /usr/share/gocode/src/cloud.google.com/go/pubsub/pstest
PUBSUB_DEBS := golang-go golang-google-cloud-dev

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/postauth demo --out out

pubsub-deps:
	@if command -v go >/dev/null 2>&1 && [ -d $(PSTEST_SRC) ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then SUDO=; \
	elif sudo -n true 2>/dev/null; then SUDO='sudo -n'; \
	else echo "pubsub-deps: cannot install $(PUBSUB_DEBS) (not root, no passwordless sudo)"; exit 0; fi; \
	if ! command -v go >/dev/null 2>&1 || [ ! -d $(PSTEST_SRC) ]; then \
	  export DEBIAN_FRONTEND=noninteractive; \
	  $$SUDO apt-get install -y -q $(PUBSUB_DEBS) >/dev/null \
	  || { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q $(PUBSUB_DEBS) >/dev/null; } \
	  || echo "pubsub-deps: apt-get install $(PUBSUB_DEBS) failed"; fi

test: $(STAMP) pubsub-deps
	$(BIN)/python -m pytest -q tests

bench: $(STAMP)
	$(BIN)/python bench/run.py

# Detection quality: sample -> train -> batch and streaming detection -> postauth evaluate,
# plus detection over ../shared/data; writes out/evaluate/report.{json,md} (README tables).
evaluate: $(STAMP)
	$(BIN)/python bench/evaluate.py --out out/evaluate

# Pages per 1,000 identity-days over several generator seeds (everyday change + attacks).
bench-pages: $(STAMP)
	$(BIN)/python bench/pages.py --seeds 7,8,9

# Per-stage throughput, the Beam-free limit, Beam's AnomalyDetection peer and scaling (needs [bench]).
bench-pipeline: $(STAMP)
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python bench/pipeline.py

bench-state: $(STAMP)
	$(BIN)/python bench/state.py

# Bytes and encode+decode time of the shuffle coders against Beam's pickle fallback.
bench-coder: $(STAMP)
	$(BIN)/python bench/coder.py

bench-model: $(STAMP)
	$(BIN)/python bench/model.py

bench-pubsub: $(STAMP) pubsub-deps
	$(BIN)/python bench/pubsub.py

clean:
	rm -rf out .pytest_cache build *.egg-info
