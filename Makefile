# The two commands of the README. Everything else is reached through these.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install bytecode compiled prism otelcol flink flink-if-served bench bench-pipeline bench-state bench-coder bench-model bench-pubsub bench-streaming bench-startup bench-scale evaluate evaluate-joint clean pubsub-deps chromium-deps

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

# The project's own modules compiled to bytecode once, here: where PYTHONDONTWRITEBYTECODE is set
# (many container images; this project's CI machines) Python never caches it and compiles every
# module from source in every process, ~0.15-0.2 s of each run's start (pip does this for the
# installed packages, not for an editable install). Up-to-date files are skipped; an edited one
# is recompiled in memory by Python until the next run of this target.
bytecode: $(STAMP) compiled
	@$(BIN)/python -m compileall -q domain models transforms pipeline >/dev/null

# The per-window modules (setup.py COMPILED) built as C extensions beside their sources, with
# Cython from the venv (docs/compiled.md). Incremental: only a module whose source changed is
# rebuilt; the tests refuse to run on a stale one. POSTAUTH_PURE_PYTHON=1 builds nothing.
compiled: $(STAMP)
	@$(BIN)/python setup.py -q build_ext --inplace -j 2 >/dev/null

# Beam's Prism runner (what the DirectRunner tries first since Beam 2.68), built from source for the
# apache-beam version pinned in setup.py into a folder the project owns; `postauth` picks it up
# from there (pipeline/prism.py). The module's source is copied from Go's module cache and the
# project's patches (tools/prism/*.patch, docs/runners.md) applied before the build; a patch that
# no longer applies fails the build. Rebuilt when a patch changes. Last line: its path.
GO ?= $(shell command -v go 2>/dev/null || echo /usr/local/go/bin/go)
BEAM_VERSION := $(shell sed -n "s/.*'apache-beam==\([0-9][0-9.]*\)'.*/\1/p" setup.py | head -n 1)
PRISM_DIR := .prism/v$(BEAM_VERSION)
PRISM := $(PRISM_DIR)/prism
PRISM_PATCHES := $(sort $(wildcard tools/prism/*.patch))
PRISM_SRC := $(PRISM_DIR)/src

$(PRISM): $(PRISM_PATCHES)
	@test -n "$(BEAM_VERSION)" || { echo "prism: no apache-beam==X.Y.Z pin in setup.py" >&2; exit 1; }
	@echo "building Prism v$(BEAM_VERSION) with $$($(GO) version), patched with $(notdir $(PRISM_PATCHES)), into $(PRISM_DIR)" >&2
	rm -rf "$(PRISM_SRC)" && mkdir -p "$(PRISM_DIR)"
	json=$$(GOFLAGS=-buildvcs=false $(GO) mod download -json github.com/apache/beam/sdks/v2@v$(BEAM_VERSION) 2>&1); \
	src=$$(printf '%s\n' "$$json" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",*$$/\1/p'); \
	test -d "$$src" || { printf 'prism: no module source from go mod download:\n%s\n' "$$json" >&2; exit 1; }; \
	cp -R "$$src" "$(PRISM_SRC)" && chmod -R u+w "$(PRISM_SRC)"
	for p in $(PRISM_PATCHES); do patch -d "$(PRISM_SRC)" -p1 --forward --quiet < "$$p" || exit 1; done
	cd "$(PRISM_SRC)" && GOFLAGS=-buildvcs=false $(GO) build -o "$(CURDIR)/$(PRISM)" ./go/cmd/prism
	rm -rf "$(PRISM_SRC)"

prism: $(PRISM)
	@echo "$(CURDIR)/$(PRISM)"

# A minimal OpenTelemetry Collector (OTLP receiver -> file exporter, collector v0.161.0) built from
# tools/otelcol with Go, to run config/otelcol-file.yaml in front of postauth (docs/otel.md).
OTELCOL := .otelcol/otelcol-postauth
$(OTELCOL): tools/otelcol/main.go tools/otelcol/go.mod
	cd tools/otelcol && GOFLAGS=-buildvcs=false $(GO) build -o "$(CURDIR)/$(OTELCOL)" .

otelcol: $(OTELCOL)
	@echo "$(CURDIR)/$(OTELCOL)"

# Beam's Flink job server jar for the pinned apache-beam version, fetched from Maven Central with
# Maven into a folder the project owns; `postauth ... --runner=FlinkRunner` picks it up from there
# (pipeline/flink.py). FLINK_VERSION is one Beam publishes a job server for (1.19, 1.20, 2.0, 2.1,
# 2.2 for Beam 2.77; 2.2 is Beam's default). No download when the jar is there. Last line: its path.
# When Maven Central answers that it has no such jar, the coordinates and its answer are written
# to $(FLINK_REFUSED) (the Flink tests then skip with that text) and the target fails.
MVN ?= mvn
FLINK_VERSION ?= 2.2
FLINK_DIR := .flink/v$(BEAM_VERSION)
FLINK_ARTIFACT := org.apache.beam:beam-runners-flink-$(FLINK_VERSION)-job-server:$(BEAM_VERSION)
FLINK_JAR := $(FLINK_DIR)/beam-runners-flink-$(FLINK_VERSION)-job-server-$(BEAM_VERSION).jar
FLINK_REFUSED := $(FLINK_DIR)/refused-$(FLINK_VERSION).txt

$(FLINK_JAR):
	@test -n "$(BEAM_VERSION)" || { echo "flink: no apache-beam==X.Y.Z pin in setup.py" >&2; exit 1; }
	@command -v $(MVN) >/dev/null 2>&1 || { echo "flink: Maven ($(MVN)) not found: apt-get install maven" >&2; exit 1; }
	@mkdir -p $(FLINK_DIR)
	@echo "fetching $(FLINK_ARTIFACT) from Maven Central into $(FLINK_DIR)" >&2
	@log=$(FLINK_DIR)/mvn-$(FLINK_VERSION).log; \
	if $(MVN) -B -U dependency:copy -Dartifact=$(FLINK_ARTIFACT):jar \
	     -DoutputDirectory="$(CURDIR)/$(FLINK_DIR)" >$$log 2>&1 && test -s $@; then \
	  rm -f $(FLINK_REFUSED); \
	else \
	  if grep -q 'Could not find artifact' $$log; then \
	    { echo "$$(date -u +%FT%TZ) Maven Central refused $(FLINK_ARTIFACT):jar:"; \
	      grep -m1 -o 'Could not find artifact.*' $$log; } >$(FLINK_REFUSED); \
	    cat $(FLINK_REFUSED) >&2; \
	  else tail -n 20 $$log >&2; fi; \
	  echo "flink: no job server jar (Maven's log: $(CURDIR)/$$log)" >&2; exit 1; \
	fi

flink: $(FLINK_JAR)
	@echo "$(CURDIR)/$(FLINK_JAR)"

# `make test` fetches the jar when Maven Central serves it; the Flink tests then run (and fail
# under CI=true without it), and skip with Maven Central's answer when it refused it.
# A refusal recorded earlier does not count: only this run's answer from Maven Central does.
flink-if-served:
	@rm -f $(FLINK_REFUSED)
	@$(MAKE) --no-print-directory flink >/dev/null || test -f $(FLINK_REFUSED)

demo: $(STAMP) bytecode
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

# Debian's chromium renders `postauth report` headless in tests/test_report_html.py (skipped
# without it, failing under CI=true).
chromium-deps:
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ]; then SUDO=; \
	elif sudo -n true 2>/dev/null; then SUDO='sudo -n'; \
	else echo "chromium-deps: cannot install chromium (not root, no passwordless sudo)"; exit 0; fi; \
	if ! command -v chromium >/dev/null 2>&1; then \
	  export DEBIAN_FRONTEND=noninteractive; \
	  $$SUDO apt-get install -y -q chromium >/dev/null \
	  || { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q chromium >/dev/null; } \
	  || echo "chromium-deps: apt-get install chromium failed"; fi

# One test process per core, four at most (pytest-xdist; a file's tests share a process, so its
# fixtures are made once per file): the suite's longest tests mostly wait on streaming jobs.
test: $(STAMP) bytecode pubsub-deps chromium-deps prism otelcol flink-if-served
	$(BIN)/python -m pytest -q -n auto --maxprocesses=4 --dist loadfile tests

bench: $(STAMP) bytecode
	$(BIN)/python bench/run.py

# Detection quality: sample -> train -> batch and streaming detection -> postauth evaluate,
# plus detection over ../shared/data, plus seeds 8 and 9 in batch for the page rates;
# writes out/evaluate/report.{json,md} (docs/detection-quality.md tables).
evaluate: $(STAMP) bytecode
	$(BIN)/python bench/evaluate.py --out out/evaluate

# The joint agent fleet: spans joined to the roles' CloudTrail (docs/agent-join.md).
evaluate-joint: $(STAMP) bytecode
	$(BIN)/python -m postauth.pipeline.evaluate_agents --out out/evaluate-joint --seeds 7,8,9

# Per-stage throughput, the Beam-free limit, Beam's AnomalyDetection peer and scaling (needs [bench]).
bench-pipeline: $(STAMP) bytecode
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python bench/pipeline.py

# Issue 15's two figures in one run: fixed start (vs an empty Beam job) and marginal cost (vs the
# Beam-free limit); docs/startup-and-marginal.md.
bench-startup: $(STAMP) bytecode
	$(BIN)/python bench/startup.py

# Scale and skew: a 10,000-identity fleet's day in batch (FnApiRunner and the default runner),
# the streaming job on Prism at the fleet's event rate, and the same with one identity holding
# 30% of the events; wall, CPU-s, peak RSS, state size, Dataflow workers (docs/performance.md).
bench-scale: $(STAMP) bytecode prism
	$(BIN)/python bench/scale.py

bench-state: $(STAMP) bytecode
	$(BIN)/python bench/state.py

# Bytes and encode+decode time of the shuffle coders against Beam's pickle fallback.
bench-coder: $(STAMP) bytecode
	$(BIN)/python bench/coder.py

bench-model: $(STAMP) bytecode
	$(BIN)/python bench/model.py

bench-pubsub: $(STAMP) bytecode pubsub-deps
	$(BIN)/python bench/pubsub.py

# Pub/Sub streaming on Prism (the splittable-DoFn reader) against the BundleBasedDirectRunner (the
# native read), the same events in one run: events/s per core and window-closing delay, with ratios.
bench-streaming: $(STAMP) bytecode pubsub-deps prism
	$(BIN)/python bench/streaming.py

clean:
	rm -rf out .pytest_cache build *.egg-info
