# The two entry points of the README: `make demo` and `make test`.
# Both install what they need on a fresh Debian machine (as root) and are quick when it is there.

SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
APT_PACKAGES := docker-registry fuse3 libfuse3-dev pkg-config skopeo rclone systemd curl attr ca-certificates openssl nginx-light
APT_COMMANDS := docker-registry fusermount3 pkg-config skopeo rclone systemd-analyze curl getfattr update-ca-certificates openssl nginx
PYTEST_ARGS ?=

.PHONY: setup apt-deps install-bin demo test bench clean

setup: apt-deps $(VENV)/.stamp install-bin

# Checks the commands each time (cheap) rather than trusting a stamp file.
apt-deps:
	@missing=0; for c in $(APT_COMMANDS); do command -v $$c >/dev/null || missing=1; done; \
	pkg-config --exists fuse3 2>/dev/null || missing=1; \
	if [ $$missing = 1 ]; then \
	  echo "installing system packages: $(APT_PACKAGES)"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(APT_PACKAGES); \
	fi

$(VENV)/.stamp: pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -e '.[test]'
	@touch $@

# mount(8), fstab and systemd units find `ocifs` in /usr/local/bin and the mount helper in /sbin
# (mount strips PATH; see docs/operations.md). As root, link them to this virtualenv.
install-bin: $(VENV)/.stamp
	@if [ "$$(id -u)" = 0 ]; then \
	  ln -sfn $(CURDIR)/$(VENV)/bin/ocifs /usr/local/bin/ocifs; \
	  ln -sfn $(CURDIR)/$(VENV)/bin/mount.fuse.ocifs /sbin/mount.fuse.ocifs; \
	else echo "not root: skipping /usr/local/bin/ocifs and /sbin/mount.fuse.ocifs (mount -t fuse.ocifs needs them)"; fi

demo: setup
	@$(VENV)/bin/python scripts/demo.py

test: setup
	$(VENV)/bin/ruff check ocifs tests bench scripts
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest $(PYTEST_ARGS)

bench: setup
	$(VENV)/bin/python bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
