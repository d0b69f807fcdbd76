# Two entry points for a fresh machine: `make demo` and `make test`.
# Both install what is missing: Debian's packages (pyfuse3 builds against
# libfuse3) and a virtualenv in .venv. The demo installs ckptfs alone; the
# tests add torch, safetensors, Lightning and friends (the [test] extra).

VENV ?= .venv
PY := $(VENV)/bin/python
# getfattr (attr) shows the tensors' attributes in the demo
# patch: pyfuse3 is built with a small patch (vendor/pyfuse3/README.md)
# man-db: `man ckptfs` (the page is made from the argument parser, below)
DEMO_APT := fuse3 libfuse3-dev pkg-config gcc attr patch man-db
# vim and nano: the tests of writable mounts edit through real editors;
# systemd: systemd-analyze verifies the units in systemd/; zsh: the completion;
# python3-dev, python3-venv: an unprivileged user's mount runs Debian's own python3
# chromium, chromium-driver: the HTML reports open in a real headless browser (tests/browser.py)
TEST_APT := $(DEMO_APT) vim nano systemd zsh python3-dev python3-venv chromium chromium-driver
# Debian's own python3 needs its headers and venv module to build pyfuse3
PYTHON_APT := $(if $(filter /usr/bin/python3,$(shell command -v python3)),python3-dev python3-venv)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PIP := $(PY) -m pip install --progress-bar on

# An editable install installs no data files: the man page and completions
# are made from the argument parser into the virtualenv's share/, where
# man(1) and bash-completion look beside its bin/ (ckptfs/commands/manual.py)
MAN_PAGE := $(VENV)/share/man/man1/ckptfs.1
$(MAN_PAGE): ckptfs/manual.py $(wildcard ckptfs/commands/*.py) ckptfs/mount/options.py ckptfs/mount/logs.py | $(PY)
	$(PY) -m ckptfs.manual --prefix $(VENV)

.PHONY: demo test bench before-after fuzz clean demo-deps test-deps

define apt_install
	@missing=$$(for p in $(1) $(PYTHON_APT); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "== installing Debian packages:" $$missing; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi
endef

$(PY):
	@echo "== making a virtualenv in $(VENV)"
	python3 -m venv $(VENV)

$(VENV)/.demo-installed: pyproject.toml vendor/pyfuse3/zero-message-open.patch vendor/pyfuse3/read-interrupts.patch vendor/pyfuse3/fast-loop.patch | $(PY)
	bash vendor/pyfuse3/install.sh $(PY)
	@echo "== installing ckptfs and its dependencies (about 30 MB)"
	$(PIP) -e .
	touch $@

$(VENV)/.test-installed: pyproject.toml vendor/pyfuse3/zero-message-open.patch vendor/pyfuse3/read-interrupts.patch vendor/pyfuse3/fast-loop.patch | $(PY)
	bash vendor/pyfuse3/install.sh $(PY)
	@echo "== installing ckptfs with its test dependencies (torch, safetensors, Lightning, ...)"
	$(PIP) -e '.[test]'
	touch $@ $(VENV)/.demo-installed

demo-deps:
	$(call apt_install,$(DEMO_APT))
	@$(MAKE) --no-print-directory $(VENV)/.demo-installed $(MAN_PAGE)

test-deps:
	$(call apt_install,$(TEST_APT))
	@$(MAKE) --no-print-directory $(VENV)/.test-installed $(MAN_PAGE)

demo: demo-deps
	@bash samples/demo.sh $(VENV)/bin/ckptfs $(PY)

test: test-deps
	$(PY) -m ruff check ckptfs tests bench
	$(PY) -m pytest

# FUZZ_SECONDS per parser (default 300); atheris if it installs, else hypothesis
FUZZ_SECONDS ?= 300
fuzz: test-deps
	$(PIP) -e '.[fuzz]' || echo "== atheris does not install here: the fuzzers run with hypothesis"
	$(PY) -m tests.fuzz.run --seconds $(FUZZ_SECONDS)

# ratarmount, the peer the benchmarks compare with, lives in a virtualenv of
# its own: it pins an older rapidgzip than ckptfs is tested with.
# QUICK=1: 1k and 10k tensors and smaller files (minutes instead of half an hour)
# the scale benchmark's walks and reads of commit REV and of this tree, taking turns
before-after:
	bench/before_after.sh $(REV) $(or $(ROUNDS),2)

RATARMOUNT_VENV ?= .venv-ratarmount
# picklescan, modelscan and fickling, the scanners `ckptfs scan` is compared with, likewise
SCANNERS_VENV ?= .venv-scanners
# BEFORE=DIR [BEFORE_PYTHON=PY]: the issue-31 targets of the checkout DIR too, beside this tree's
# strace: bench/targets.py counts the FUSE requests of a walk with perf where
# its syscall tracepoints work, else with strace
bench: test-deps
	$(call apt_install,strace)
	$(PIP) -e '.[bench]'
	[ -x $(RATARMOUNT_VENV)/bin/ratarmount ] || { python3 -m venv $(RATARMOUNT_VENV) && $(RATARMOUNT_VENV)/bin/pip install --progress-bar on ratarmount; }
	$(PY) bench/targets.py $(if $(QUICK),--quick,--plot docs/scale-tensors.png) --ratarmount $(RATARMOUNT_VENV)/bin/ratarmount \
		$(if $(BEFORE),--before $(BEFORE)) $(if $(BEFORE_PYTHON),--before-python $(BEFORE_PYTHON))
	$(PY) bench/scale.py $(if $(QUICK),--quick) --ratarmount $(RATARMOUNT_VENV)/bin/ratarmount --plot docs/scale.png
	$(PY) bench/run.py $(if $(QUICK),--gib 0.25) --ratarmount $(RATARMOUNT_VENV)/bin/ratarmount
	$(PY) bench/tools.py $(if $(QUICK),--rounds 2)
	$(PY) bench/gguf_bench.py $(if $(QUICK),--rounds 2)
	$(PY) bench/onnx_load.py $(if $(QUICK),--rounds 1 --gib 0.25)
	$(PY) bench/deepspeed_bench.py $(if $(QUICK),--rounds 2)
	$(PY) bench/remote_bench.py $(if $(QUICK),--rounds 2)
	$(PY) bench/adapter_merge.py $(if $(QUICK),--rounds 1)
	$(PY) bench/dequantize.py $(if $(QUICK),--rounds 1 --gib 0.25)
	$(PY) bench/orbax_load.py $(if $(QUICK),--rounds 1)
	$(PY) bench/stats.py $(if $(QUICK),--rounds 1)
	[ -x $(SCANNERS_VENV)/bin/fickling ] || { python3 -m venv $(SCANNERS_VENV) && $(SCANNERS_VENV)/bin/pip install --progress-bar on picklescan modelscan fickling typing_extensions; }
	$(PY) bench/scan_bench.py --scanners $(SCANNERS_VENV)

clean:
	rm -rf $(VENV) $(RATARMOUNT_VENV) $(SCANNERS_VENV) build *.egg-info
