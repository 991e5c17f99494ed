# gradjit developer tasks. Every target works from a fresh clone: it builds .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TEST_STAMP := $(VENV)/.stamp-test
BENCH_STAMP := $(VENV)/.stamp-bench
EXAMPLES_STAMP := $(VENV)/.stamp-examples
DOCS_STAMP := $(VENV)/.stamp-docs

# Benchmarks run with a malloc that never hands memory back to the OS (one arena, no mmap,
# no trim), so a contestant that returns a fresh 80 MB array is not charged ~20k page faults
# per call. OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are cleared so that OpenBLAS detects
# the CPU and its cache itself instead of using an override.
BENCH_ENV := env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \
	GLIBC_TUNABLES=glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=1099511627776

.PHONY: $(VENV) demo test bench clean docs docs-serve

$(VENV): $(TEST_STAMP)

# Re-runs only when pyproject.toml changes.
$(TEST_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[test]'
	touch $@

# torch is optional: only the local CPU wheel is wanted (a bare `torch` pulls a CUDA build).
$(BENCH_STAMP): $(TEST_STAMP)
	$(PY) -m pip install -e '.[test,bench,examples]'
	$(PY) -m pip install torch==2.13.0 || \
		echo "warning: torch==2.13.0 could not be installed; the torch column will say n/a" >&2
	touch $@

# The examples' optional extra (matplotlib for their figures, scipy): pip install gradjit[examples].
$(EXAMPLES_STAMP): $(TEST_STAMP)
	$(PY) -m pip install -e '.[examples]'
	touch $@

demo: $(EXAMPLES_STAMP)
	$(PY) examples/run_all.py

# The docs extra (mkdocs, mkdocs-material, pymdown-extensions); the examples' too, for figures.
$(DOCS_STAMP): $(EXAMPLES_STAMP)
	$(PY) -m pip install -e '.[docs]'
	touch $@

# The site in site/: the examples run first, writing the figures the pages show
# (examples/figures/); docs/hooks.py adds them and the generated docs/coverage page.
docs: $(DOCS_STAMP)
	$(PY) examples/run_all.py -q
	$(PY) -m mkdocs build --strict

docs-serve: $(DOCS_STAMP)
	$(PY) -m mkdocs serve

# pytest exits 5 when it collected no tests; that is a failure here, never a silent pass.
# The suite runs on every core (numba compiles on one): each test file in one worker
# (--dist loadfile), so a file's compile counts and module-scoped caches stay its own.
# Extra pytest arguments: make test PYTEST_ARGS="-k cache -x"; TEST_WORKERS=0 runs serially.
TEST_WORKERS ?= $(shell $(PYTHON) -c "import os; print(min(len(os.sched_getaffinity(0)), 4))")
# The CUDA tests (tests/cuda) run in a process of their own under numba-cuda's simulator
# (NUMBA_ENABLE_CUDASIM=1 must be set before numba is first imported); the exit status is the
# first failure of the two runs (PYTEST_ARGS selecting no CUDA test is not one).
test: $(VENV)
	NUMBA_ENABLE_CUDASIM=1 $(PY) -m pytest -q -p no:cacheprovider --ignore=tests/cuda \
		-n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests" >&2; fi; \
	NUMBA_ENABLE_CUDASIM=1 $(PY) -m pytest -q -p no:cacheprovider tests/cuda \
		-n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS); rc2=$$?; \
	if [ $$rc2 -eq 5 ] && [ -n "$(PYTEST_ARGS)" ]; then rc2=0; fi; \
	if [ $$rc2 -eq 5 ]; then echo "error: pytest collected no CUDA tests" >&2; fi; \
	if [ $$rc -eq 0 ]; then rc=$$rc2; fi; \
	exit $$rc

bench: $(BENCH_STAMP)
	$(BENCH_ENV) $(PY) benchmarks/run.py --out benchmarks/results
	$(BENCH_ENV) $(PY) benchmarks/dask_bench.py --out benchmarks/results/dask.md

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .hypothesis .gradjit-cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
