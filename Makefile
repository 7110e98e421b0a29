# Two entry points: `make serve` and `make test` (see README). Everything else supports them.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DATA_DIR ?= lamella-data
PORT ?= 8080

SWAGGER_UI := 5.35.0
VENDOR := static/vendor/swagger-ui

.PHONY: serve test lint docs bench stall fuzz system-test-deps api-viewer dist image clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/pip install -q -e .
	touch $@

# The published OME-Zarr transformation conformance cases and their runner (oztc), for tests/test_scene.py. The wheel
# declares Python >=3.12 but its runner needs only 3.11's standard library (tomllib, typing.Self) and it has no
# dependencies: installed by name and version, without the version check.
CONFORMANCE := ome-zarr-transformations-conformance==0.1.2

$(VENV)/.test-installed: $(VENV)/.installed Makefile
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/pip install -q --no-deps --ignore-requires-python '$(CONFORMANCE)'
	touch $@

$(VENV)/.bench-installed: $(VENV)/.test-installed
	$(BIN)/pip install -q -e '.[bench]'
	touch $@

# Swagger UI for /api/docs, from the npm registry (`npm pack`: the package alone, no install scripts).
# Optional for serving: without npm the page points at /api/openapi.json instead.
$(VENDOR)/swagger-ui-bundle.js:
	@mkdir -p build/npm $(VENDOR)
	cd build/npm && npm pack --silent swagger-ui-dist@$(SWAGGER_UI) >/dev/null
	tar -xzf build/npm/swagger-ui-dist-$(SWAGGER_UI).tgz -C $(VENDOR) --strip-components=1 \
		package/swagger-ui-bundle.js package/swagger-ui.css package/LICENSE package/NOTICE

api-viewer:
	@command -v npm >/dev/null && $(MAKE) -s $(VENDOR)/swagger-ui-bundle.js || \
		echo "npm not found: /api/docs will link to /api/openapi.json instead of showing Swagger UI"

serve: $(VENV)/.installed api-viewer
	$(BIN)/lamella serve --demo --data-dir $(DATA_DIR) --host 127.0.0.1 --port $(PORT)

# Debian's Chromium and ChromeDriver for the browser tests, nginx (nginx-light) for the deployment test
# (tests/test_nginx.py); the local PostgreSQL if installed but stopped.
system-test-deps:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null || \
		! { command -v nginx >/dev/null || [ -x /usr/sbin/nginx ]; }; then \
		$(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium chromium-driver nginx-light; fi
	@if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ] && \
		! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then \
		$(SUDO) pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql | head -1) main start || true; fi

lint: $(VENV)/.test-installed
	$(BIN)/ruff check .

# Three pytest-xdist workers, each taking whole test files (their module fixtures: servers, a browser); much of
# the suite waits on servers, browsers and subprocesses, so three keep two cores busy.
test: $(VENV)/.test-installed system-test-deps $(VENDOR)/swagger-ui-bundle.js lint
	$(BIN)/pytest -n 3 --dist loadfile

# The user guide, warnings as errors (tests/test_docs.py builds it too): build/docs/index.html.
docs: $(VENV)/.test-installed
	$(BIN)/sphinx-build -W --keep-going -b html docs build/docs

# The sdist and the wheel (with Swagger UI when npm is there) in dist/; the server image from them.
dist: $(VENV)/.test-installed api-viewer
	$(BIN)/python -m build --outdir dist .

image:
	docker build --build-arg SWAGGER_UI=$(SWAGGER_UI) -t lamella .

# The route-table fuzzer at length (tests/fuzzing.py; `make test` runs it briefly): FUZZ_REQUESTS hostile
# requests against a server on a copy of the test data, its summary in benchmarks/results/fuzz.json.
FUZZ_REQUESTS ?= 100000
FUZZ_SEED ?= 18
fuzz: $(VENV)/.test-installed
	@mkdir -p benchmarks/results
	FUZZ_REQUESTS=$(FUZZ_REQUESTS) FUZZ_SEED=$(FUZZ_SEED) FUZZ_REPORT=benchmarks/results/fuzz.json \
		$(BIN)/pytest tests/test_fuzz.py -q -s -o timeout=3600 -k hostile_requests
	@echo "summary in benchmarks/results/fuzz.json"

# The longest wait of another client under each pathological request, against the 100 ms target (a quiet
# machine: other work on its two cores shows as waits of its own).
stall: $(VENV)/.test-installed
	STALL_LIMIT_MS=100 $(BIN)/pytest tests/test_stall.py -q -s -p no:randomly

# Peers and load tools for benchmarks/: wrk and nginx from Debian, ome-zarr-py and ngff-zarr from PyPI.
bench: $(VENV)/.bench-installed
	@if ! command -v wrk >/dev/null || ! command -v nginx >/dev/null; then \
		$(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q wrk nginx-light; fi
	$(BIN)/python benchmarks/serve_chunks.py
	$(BIN)/python benchmarks/import_pyramid.py
	$(BIN)/python benchmarks/tps_chunks.py
	$(BIN)/python benchmarks/meshes.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
