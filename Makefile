# Two commands set up everything on a fresh machine: `make up` and `make test`.
SHELL := /bin/bash
PY_SYS ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export PYTHONPATH := $(CURDIR)/generated:$(CURDIR)
SITE = $(shell $(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
PROTOS := $(sort $(shell find protos -name "*.proto"))

.PHONY: venv proto lint up test report bench audit-verify clean

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PY_SYS) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# Regenerates generated/ (messages, stubs, .pyi) from protos/; never edit generated/ by hand.
proto: venv
	rm -rf generated && mkdir -p generated
	$(PY) -m grpc_tools.protoc -Iprotos -Ithird_party -I$(SITE)/grpc_tools/_proto \
	  --python_out=generated --pyi_out=generated --grpc_python_out=generated $(PROTOS)
	touch generated/.stamp

lint: venv
	$(VENV)/bin/buf lint
	$(VENV)/bin/ruff check services edge tests tools
	$(VENV)/bin/ruff format --check services edge tests tools

generated/.stamp: $(PROTOS) | venv
	$(MAKE) proto

# Starts every built service and the edge on embedded defaults; Ctrl-C stops them all.
up: venv generated/.stamp
	$(PY) -m services.launcher

# pytest's output also goes to reports/logs/F.backend_tests.log (the seed's test log; `make report` reads it).
test: venv generated/.stamp
	mkdir -p reports/logs
	set -o pipefail; $(PY) -m pytest -q -rfEs $(PYTEST_ARGS) 2>&1 | tee reports/logs/F.backend_tests.log

# reports/F.backend_wiring_summary.md: a stack on its own ports (37001, 37011-37018), called with the
# scenarios tests/integration/test_endpoints.py asserts on; see tools/report/.
report: venv generated/.stamp
	$(PY) -m tools.report

bench: venv generated/.stamp
	$(PY) -m tests.bench

audit-verify: venv
	$(PY) -m services.core.audit verify

clean:
	rm -rf generated .launchpad reports/logs
