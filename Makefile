# Every install pins torch through constraints.txt (an unpinned torch pulls a multi-GB CUDA build).
PY ?= python3
VENV ?= .venv
PIP = $(VENV)/bin/pip

.PHONY: venv demo test
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt -e '.[train,test]'
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/edgekd demo --out runs/demo

test: venv
	$(VENV)/bin/python -m pytest -ra
