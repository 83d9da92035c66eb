# The two commands (README.md): `make demo` and `make test`. Each sets up .venv first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint clean

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev,train]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/trainguard demo

# The architecture is checked with the tests: pyflakes-level lint, then the import layers.
lint: $(BIN)/.installed
	$(BIN)/ruff check supervisor agents tests bench
	$(BIN)/lint-imports

test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .hypothesis
