# The README's two commands: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_OUT ?= demo-out

.PHONY: demo test venv chromium clean images push-images

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

# The browser tests drive Debian's chromium; Playwright's own browser download cannot work offline.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium; }

test: venv chromium
	$(PY) -m pytest -q tests

demo: venv
	$(VENV)/bin/imgsearch demo --out $(DEMO_OUT)

# Dataflow worker images (docker/): REGISTRY is an Artifact Registry repository, e.g.
# REGION-docker.pkg.dev/PROJECT/REPOSITORY; TAG defaults to the commit.
REGISTRY ?= imgsearch
TAG ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo latest)

# worker-lean: index, fetch, extract-text, rank (no torch); worker-cpu: extract-images on CPUs;
# worker-gpu: extract-images on GPUs. README's "Running on Dataflow" says which stage uses which.
images:
	docker build -f docker/worker-cpu.Dockerfile --build-arg EXTRAS= -t $(REGISTRY)/worker-lean:$(TAG) .
	docker build -f docker/worker-cpu.Dockerfile -t $(REGISTRY)/worker-cpu:$(TAG) .
	docker build -f docker/worker-gpu.Dockerfile -t $(REGISTRY)/worker-gpu:$(TAG) .

push-images: images
	docker push $(REGISTRY)/worker-lean:$(TAG)
	docker push $(REGISTRY)/worker-cpu:$(TAG)
	docker push $(REGISTRY)/worker-gpu:$(TAG)

clean:
	rm -rf $(DEMO_OUT) .pytest_cache
