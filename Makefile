# All set-up lives here: `make test` and `make demo` work on a fresh clone and are fast the second time.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test test-slow lint demo bench gpu-check clean

install: $(STAMP)

# The CPU wheel of torch lies on this machine's disk; GPU machines get their CUDA build from requirements.txt.
$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	if ! command -v nvidia-smi >/dev/null 2>&1; then $(PY) -m pip install -q torch==2.13.0; fi
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

lint: $(STAMP)
	$(VENV)/bin/ruff check .

demo: $(STAMP)
	$(PY) -m spark.demo

# math-verify (the verifier's reference) and TRL (the GRPO step's) are benchmark-only: installed here, not in
# requirements.txt.
bench: $(STAMP)
	$(PY) -m pip install -q math-verify trl==1.16.0
	PYTHONPATH=. $(PY) benchmarks/sampler.py
	PYTHONPATH=. $(PY) benchmarks/verifier.py
	PYTHONPATH=. $(PY) benchmarks/vl_rollout.py
	PYTHONPATH=. $(PY) benchmarks/vs_trl.py
	PYTHONPATH=. $(PY) benchmarks/update.py

# The device check (benchmarks/gpu_check.py), the same command as without make: it runs on a bare device image,
# so it uses the venv's python when there is one and the system's otherwise, and installs nothing. The report
# goes to GPU_CHECK_OUT (on a lent machine: the folder that comes back).
GPU_CHECK_OUT ?= runs/gpu_check
gpu-check:
	PYTHONPATH=. $(if $(wildcard $(PY)),$(PY),$(PYTHON)) benchmarks/gpu_check.py --out $(GPU_CHECK_OUT)

clean:
	rm -rf $(VENV) runs .pytest_cache
