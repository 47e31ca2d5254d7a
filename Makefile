# The one front door: `make run` tries the relay in sandbox mode, `make test` checks everything.
UV := $(shell command -v uv 2>/dev/null)
ifeq ($(UV),)
UV := python3 -m uv
endif

.PHONY: run test lint sync bootstrap deps bench bench-smoke

bootstrap:  ## install uv with pip when it is missing
	@$(UV) --version >/dev/null 2>&1 || python3 -m pip install -q uv \
		|| python3 -m pip install -q --user --break-system-packages uv

deps:  ## the Debian packages the tests and benchmarks use (list in scripts/deps.sh)
	@scripts/deps.sh

sync: bootstrap
	$(UV) sync --locked --extra sandbox

run: sync  ## the relay against simulated push services on 127.0.0.1:3000
	$(UV) run push-relay sandbox

lint: sync
	$(UV) run ruff check src tests bench
	$(UV) run ruff format --check src tests bench
	$(UV) run mypy --strict src

test: deps lint
	$(UV) run pytest

bench: deps sync  ## throughput and latency figures against nginx, see bench/README.md
	$(UV) run python bench/run.py
