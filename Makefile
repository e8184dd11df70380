# Chronotope: `make demo` and `make test` set everything up on first use.
PY      := .venv/bin/python
PIP     := .venv/bin/pip
STAMP   := .venv/.setup-done
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup test demo clean

setup: $(STAMP)

# torch is pinned and installed first: the pin resolves to the CPU wheel on these machines'
# disk; an open range before torch is present would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	python3 -m venv .venv
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[dev]'
	touch $(STAMP)

test: setup
	$(PY) -m pytest tests

demo: setup
	$(PY) -m chronotope.cli demo

clean:
	rm -rf .venv build *.egg-info
