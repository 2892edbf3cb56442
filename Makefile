# Every install pins torch through constraints.txt (an unpinned torch pulls a multi-GB CUDA build).
PY ?= python3
VENV ?= .venv
PIP = $(VENV)/bin/pip

.PHONY: venv demo test
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt -e '.[train,test,plot]'
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/edgekd demo --out runs/demo

test: venv
	$(VENV)/bin/python -m pytest -ra

# Torch-free runtime on aarch64 under qemu-user-static (root; first run builds an arm64 Debian
# root with debootstrap, a few minutes): writes benchmarks/results/aarch64_qemu.{json,md}.
.PHONY: aarch64-check
aarch64-check: venv
	PYTHON=$(abspath $(VENV))/bin/python scripts/aarch64_verify.sh
