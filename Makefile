# Two entry points for a fresh machine: `make demo` and `make test`.
# Both install what is missing: Debian's fuse3 packages (pyfuse3 builds
# against libfuse3) and a virtualenv in .venv with ckptfs and its test extra.

VENV ?= .venv
PY := $(VENV)/bin/python
# vim and nano: the tests of writable mounts edit through real editors
APT_PACKAGES := fuse3 libfuse3-dev pkg-config attr vim nano
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup system-packages demo test bench clean

setup: system-packages $(VENV)/.installed

system-packages:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

demo: setup
	@bash samples/demo.sh $(VENV)/bin/ckptfs $(PY)

test: setup
	$(PY) -m pytest

bench: setup
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) build *.egg-info
