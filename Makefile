# The two commands of the README: `make run` and `make test`. Each sets up what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
COVERAGE_FLOOR := 85

.PHONY: run test test-dockerd-restart setup venv engine firewall base-image browser lint bench proxy-newest-uvicorn clean

run: setup
	$(BIN)/central-mcp up

test: setup browser lint
	CI=$${CI:-} $(BIN)/python -m pytest --cov=pipeline --cov-report=term
	@# pytest-cov reports a missed floor without failing when subprocess data is combined: enforce it here.
	$(BIN)/coverage report --fail-under=$(COVERAGE_FLOOR) > /dev/null || \
	  { echo "coverage of pipeline/ is below the $(COVERAGE_FLOOR)% floor"; exit 1; }

# Restarts dockerd under a serving provider (stops every container on the engine): .ci/run's last stage.
test-dockerd-restart: setup
	CI=$${CI:-} $(BIN)/python -m pytest -q --dockerd-restart -m dockerd_restart tests/e2e/test_dockerd_restart_e2e.py

setup: venv engine firewall base-image

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || { echo "creating the virtual environment in $(VENV)"; $(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

engine: venv
	@$(BIN)/central-mcp engine

# Server networks are kept from the host, from each other and from metadata addresses by iptables
# rules only root may install (pipeline/firewall.py); serve refuses to start servers without them.
firewall: engine
	@if [ "$$(id -u)" = 0 ]; then $(BIN)/central-mcp firewall; \
	  else $(BIN)/central-mcp firewall --check || echo "run 'sudo $(BIN)/central-mcp firewall' (needs root)"; fi

base-image: engine
	@$(BIN)/central-mcp base-image

# The page tests drive a real headless Chromium (Debian's package; Playwright uses it as is).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then echo "installing Debian's chromium for the browser tests (apt-get, as root)"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null || \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }; \
	  else echo "chromium is missing: run 'sudo apt-get install chromium' (the browser tests need it)"; fi; }

lint: venv
	$(BIN)/ruff check pipeline tests bench
	$(BIN)/ruff format --check pipeline tests bench
	$(BIN)/mypy --strict pipeline
	$(BIN)/mypy --strict tests

bench: setup
	$(BIN)/python bench/deploy_bench.py

# front.py builds on uvicorn's private names, so pyproject.toml pins uvicorn's minor version. This
# runs the proxy's suites against uvicorn's newest release instead, in a throwaway venv, to tell
# whether the pin can move (tests/test_uvicorn_contract.py names any private name that moved).
NEWEST_VENV  := .venv-uvicorn-newest
PROXY_SUITES := tests/test_uvicorn_contract.py tests/test_front.py tests/test_proxy.py \
                tests/test_proxy_upstream.py tests/test_proxy_access.py tests/test_proxy_sessions.py

proxy-newest-uvicorn:
	rm -rf $(NEWEST_VENV)
	$(PYTHON) -m venv $(NEWEST_VENV)
	$(NEWEST_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@# --no-deps: past the pin on purpose (pip then warns that central-mcp wants another uvicorn).
	$(NEWEST_VENV)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -U uvicorn
	@echo "testing uvicorn $$($(NEWEST_VENV)/bin/python -c 'import uvicorn; print(uvicorn.__version__)')" \
	  "(the newest) against the pin $$(grep -o '"uvicorn[^"]*"' pyproject.toml)"
	$(NEWEST_VENV)/bin/python -m pytest -p no:cacheprovider $(PROXY_SUITES)

clean:
	rm -rf $(VENV) $(NEWEST_VENV) .central-mcp .pytest_cache .mypy_cache .ruff_cache .coverage
