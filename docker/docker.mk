# ---------------------------------------------------------------- container image
# Included by the Makefile after its variables. `make image` builds docker/Dockerfile;
# RUNNER=docker runs any other target in that image, with the run folder and the inputs
# given on the command line mounted where the container's make expects them.
RUNNER       ?= local
# The default base is what a Bohrium user builds on: a CUDA PyTorch image (its torch is not
# used; the venv brings PyPI's torch==2.13.0). Where no registry answers, the default falls
# back to LOCAL_BASE, a Debian base made here (docker/resolve-base.sh); a BASE_IMAGE given on
# the command line or in the environment does not.
# (a remote job's copy of the project has no docker/Dockerfile, and builds no image)
CUDA_BASE    := $(if $(wildcard docker/Dockerfile),$(shell sed -n 's/^ARG BASE_IMAGE=//p' docker/Dockerfile))
LOCAL_BASE   := localhost/crygen-base:bookworm
BASE_IMAGE   ?= $(CUDA_BASE)
BASE_FALLBACK = $(if $(filter file,$(origin BASE_IMAGE)),fallback)
DOCKER       ?= docker
DOCKER_ARGS  ?=
WHEELS       := docker/wheels
CRYGEN_VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' crygen/__init__.py)
# Project version and a hash of the build's inputs (the base among them).
image_tag = crygen:$(CRYGEN_VERSION)-$$(DOCKER=$(DOCKER) docker/content-hash.sh $(1) $(PYTHON) $(REQUIREMENTS))
# The image `make image` built last: computed once, when a rule first needs it.
DOCKER_IMAGE ?= $(eval DOCKER_IMAGE := $(shell echo "$(call image_tag,$$(DOCKER=$(DOCKER) \
  docker/resolve-base.sh --no-pull $(BASE_IMAGE) $(LOCAL_BASE) $(BASE_FALLBACK)))"))$(DOCKER_IMAGE)
IMAGE_ROOT   := /opt/crygen
# Targets that always run here: building and entering the image, set-up, remote submission.
HOST_GOALS   := image shell help setup clean remote remote-status remote-fetch

.PHONY: image image-base shell

# The base is resolved (pulled, or made here) first: a base that cannot be had stops the build
# before minutes of wheels, and the tag, which hashes the base, is named after it.
image: image-base $(WHEELS)/.complete | $(SETUP) $(DEMO_DATA) ## build the container image (BASE_IMAGE; tag crygen:VERSION-HASH)
	@base=$$(DOCKER=$(DOCKER) docker/resolve-base.sh --no-pull $(BASE_IMAGE) $(LOCAL_BASE) $(BASE_FALLBACK)); \
	tag=$(if $(filter file,$(origin DOCKER_IMAGE)),$(call image_tag,$$base),$(DOCKER_IMAGE)); \
	echo "image: building $$tag on $$base"; \
	$(DOCKER) build --file docker/Dockerfile --build-arg BASE_IMAGE=$$base \
	  --build-arg PYTHON=$(PYTHON) --build-arg REQUIREMENTS='$(REQUIREMENTS)' \
	  --tag $$tag --tag crygen:$(CRYGEN_VERSION) . && echo "image: $$tag"

image-base:
	@DOCKER=$(DOCKER) docker/resolve-base.sh $(BASE_IMAGE) $(LOCAL_BASE) $(BASE_FALLBACK) >/dev/null

# Wheels for every requirement, built with this machine's pip (its index, its wheel cache).
$(WHEELS)/.complete: $(REQUIREMENTS) scripts/requirements.sh | $(SETUP)
	scripts/requirements.sh wheels $(PY) $(WHEELS) $(REQUIREMENTS)
	touch $@

# ------------------------------------------------ RUNNER=docker
docker_check = $(DOCKER) version >/dev/null 2>&1 || { echo "RUNNER=docker: no container engine \
  reachable$(if $(DOCKER_HOST), at $(DOCKER_HOST)); start one (docker/engine.sh) or use RUNNER=local" >&2; \
  exit 1; }; $(DOCKER) image inspect $(DOCKER_IMAGE) >/dev/null 2>&1 || { echo "RUNNER=docker: \
  image $(DOCKER_IMAGE) not built (make image)" >&2; exit 1; }
# A path's place in the container: absolute paths as they are, relative ones under the project.
in_image = $(if $(filter /%,$(1)),$(abspath $(1)),$(abspath $(IMAGE_ROOT)/$(1)))
mount = -v $(abspath $(1)):$(call in_image,$(1))
# The run folder and EVAL_OUT are made here first, so they belong to the caller; the inputs
# given on the command line are mounted when they exist (a missing one is the stage's error).
# Which variables name an input is crygen/settings.py's (path_settings), asked once, when needed.
DOCKER_OUTPUTS = $(OUT) $(if $(EVAL_OUT),$(EVAL_OUT))
DOCKER_PATH_VARS = $(eval DOCKER_PATH_VARS := $(shell $(SETTINGS_PY) paths))$(DOCKER_PATH_VARS)
DOCKER_INPUTS  = $(foreach v,$(DOCKER_PATH_VARS),\
  $(if $(filter command line,$(origin $v)),$(wildcard $($v))))
DOCKER_MOUNTS  = $(strip $(foreach p,$(DOCKER_OUTPUTS) $(DOCKER_INPUTS),$(call mount,$p)))
# The caller's command-line variables, except those that choose how and where to run.
DOCKER_CONTROL := RUNNER DOCKER DOCKER_ARGS DOCKER_IMAGE BASE_IMAGE VENV ENV_READY PYTHON
DOCKER_VARS = $(strip $(foreach v,$(.VARIABLES),$(if $(filter command line,$(origin $v)),\
  $(if $(filter $(DOCKER_CONTROL),$v),,$v='$(subst ','\'',$($v))'))))
DOCKER_RUN = $(DOCKER) run --rm --network=none --user "$$(id -u):$$(id -g)" $(DOCKER_MOUNTS) $(DOCKER_ARGS)

shell: ## a shell in the image, OUT mounted
	@$(docker_check)
	mkdir -p $(OUT)
	$(DOCKER_RUN) -i $$([ -t 0 ] && echo -t) --entrypoint bash $(DOCKER_IMAGE)

ifeq ($(RUNNER),docker)
DISPATCH_GOALS := $(filter-out $(HOST_GOALS),$(MAKECMDGOALS))
endif
ifneq ($(DISPATCH_GOALS),)
ifneq ($(filter $(HOST_GOALS),$(MAKECMDGOALS)),)
$(error RUNNER=docker: run $(filter $(HOST_GOALS),$(MAKECMDGOALS)) apart from $(DISPATCH_GOALS))
endif
# The Makefile skips its own rules: each goal is the container's to build.
DOCKER_DISPATCH := 1
.PHONY: $(DISPATCH_GOALS) docker-run
$(DISPATCH_GOALS): docker-run ; @:
docker-run:
	@$(docker_check)
	mkdir -p $(DOCKER_OUTPUTS)
	$(DOCKER_RUN) $(DOCKER_IMAGE) $(DISPATCH_GOALS) $(DOCKER_VARS) ENV_READY=1 VENV=$(IMAGE_ROOT)/.venv
endif
