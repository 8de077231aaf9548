# Two commands do all the set-up: `make demo` and `make test`.
PY := .venv/bin/python
STAMP := .venv/.installed
# torch's OpenMP threads sleep instead of spinning while they wait: spinning threads
# slow everything down several times on a small shared machine
export OMP_WAIT_POLICY ?= PASSIVE
# glibc hands large freed blocks back to the system and maps them again, page-faulting
# every page of each new activation-sized tensor (an LRP training step of resnet50 faulted
# 58,000 pages per step, about 8 % of its time): keep them in the heap for runs that train
GLIBC_MALLOC := MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=2147483648

.PHONY: demo test lint docs data bench clean

$(STAMP): setup.cfg pyproject.toml
	@test -d .venv || python3 -m venv .venv
	$(PY) -m pip install --no-cache-dir --upgrade pip
	$(PY) -m pip install --no-cache-dir -e '.[dev]'
	@touch $(STAMP)

data:
	@if ! dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then \
		echo "installing Debian package dataset-fashion-mnist"; \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y dataset-fashion-mnist; \
	fi

demo: $(STAMP) data
	$(GLIBC_MALLOC) $(PY) -m rrr.demo

test: $(STAMP) data
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest -q --durations=15

# every benchmark side by side; writes benchmarks/results.json and the tables of docs/benchmarks.md
bench: $(STAMP)
	$(GLIBC_MALLOC) $(PY) benchmarks/run_all.py --repeats 5

docs: $(STAMP)
	.venv/bin/mkdocs build --strict

clean:
	rm -rf .venv site build *.egg-info
