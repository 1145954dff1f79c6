# One command to serve, one to test. VENV may point outside the clone (CI caches it there).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
HOST ?= 127.0.0.1
PORT ?= 8000
BIN := $(VENV)/bin

.PHONY: install browser redis nginx hey serve test bench train evaluate clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml clients/python/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[train,dev,bench]' -e ./clients/python
	touch $@

# The launcher (app/server/launch.py): uvicorn with the bounded protocol and timeouts, from the settings.
serve: install
	$(BIN)/python -m app --host $(HOST) --port $(PORT)

# The browser tests drive Debian's Chromium (browser downloads are not possible); install it when missing.
browser:
	@test -x /usr/bin/chromium || { command -v apt-get >/dev/null && \
		$$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get update -qq && \
		$$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get install -y -qq chromium >/dev/null; }
	@test -x /usr/bin/chromium || { echo "Chromium is needed for tests/test_web.py: install Debian's chromium package"; exit 1; }

# The JOB_BACKEND=redis tests start a real redis-server; install Debian's package when missing.
redis:
	@command -v redis-server >/dev/null || { command -v apt-get >/dev/null && \
		$$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get update -qq && \
		$$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get install -y -qq redis-server >/dev/null; }
	@command -v redis-server >/dev/null || { echo "redis-server is needed for the JOB_BACKEND=redis tests: install Debian's redis-server package"; exit 1; }

# tests/test_deploy.py checks the shipped nginx.conf with `nginx -t`; install Debian's nginx-light when missing.
nginx:
	@command -v nginx >/dev/null || test -x /usr/sbin/nginx || { command -v apt-get >/dev/null && \
		$$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get update -qq && \
		$$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get install -y -qq nginx-light >/dev/null; }
	@command -v nginx >/dev/null || test -x /usr/sbin/nginx || { echo "nginx is needed for tests/test_deploy.py: install Debian's nginx-light package"; exit 1; }

# bench.serving drives the servers with hey, the load generator the performance issue measured with.
hey:
	@command -v hey >/dev/null || { command -v apt-get >/dev/null && \
		$$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get update -qq && \
		$$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get install -y -qq hey >/dev/null; }
	@command -v hey >/dev/null || { echo "hey is needed for bench.serving and its test: install Debian's hey package"; exit 1; }

test: install browser redis nginx hey
	$(BIN)/python -m pytest

# This server against LitServe serving the same handlers, and the in-process limit (the `bench` extra).
bench: install hey
	$(BIN)/python -m bench.serving

train: install
	$(BIN)/python -m training.digits
	$(BIN)/python -m training.objects
	$(BIN)/python -m training.sentiment
	$(BIN)/python -m training.calibrate
	$(BIN)/python -m app.serving.onnx_export

evaluate: install
	$(BIN)/python -m training.evaluate

clean:
	rm -rf $(VENV) var .pytest_cache test-artifacts
