# Every target sets up .venv itself when it is missing (torch pinned to the CPU wheel on disk).
PY := .venv/bin/python
VENV_STAMP := .venv/.installed-$(shell cat setup.cfg pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test test-other-kernels fuzz gate fixtures bench lint venv clean

venv: $(VENV_STAMP)

$(VENV_STAMP): setup.cfg pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	rm -f .venv/.installed-* && touch $@

demo: venv  ## migrate the bundled v1 BimodalCNN fixture, audit it, verify it, roll it back
	@mkdir -p out/demo
	.venv/bin/athelas-migrate inspect fixtures/bimodal_cnn_v1.ckpt
	.venv/bin/athelas-migrate ckpt fixtures/bimodal_cnn_v1.ckpt out/demo/bimodal_cnn_v2.ckpt --force \
	    --set 'tab_field_list=["ttm_conc_count","net_conc_amt","days_since_first_txn"]' --set label_name=label
	.venv/bin/athelas-migrate audit fixtures/bimodal_cnn_v1.ckpt --format md -o out/demo/audit.md \
	    --set 'tab_field_list=["ttm_conc_count","net_conc_amt","days_since_first_txn"]'
	@echo "audit written to out/demo/audit.md"
	.venv/bin/athelas-migrate verify fixtures/bimodal_cnn_v1.ckpt out/demo/bimodal_cnn_v2.ckpt --junit out/demo/verify.xml
	.venv/bin/athelas-migrate ckpt out/demo/bimodal_cnn_v2.ckpt out/demo/bimodal_cnn_v1_rollback.ckpt --to v1 --force

test: venv  ## the whole test suite (what CI runs)
	$(PY) -m pytest -n 2 -q tests

test-other-kernels: venv  ## the suite again on kernels other than this CPU's native ones (what another CPU computes)
	ONEDNN_MAX_CPU_ISA=SSE41 ATEN_CPU_CAPABILITY=default $(PY) -m pytest -n 2 -q tests

fuzz: venv  ## a deeper fuzzing campaign (10x the default run's examples; takes a while)
	ATHELAS_FUZZ_SCALE=10 $(PY) -m pytest -n 2 -q tests/test_fuzz.py

gate: venv  ## migrate every fixture and prove equivalence
	$(PY) tools/gate.py --out out/gate

fixtures: venv  ## regenerate the fixture checkpoints (bitwise reproducible)
	$(PY) fixtures/generate.py
	$(PY) fixtures/generate_fusion.py
	$(PY) fixtures/kernels.py --write

bench: venv  ## speed and memory benchmarks (numbers go to docs/benchmarks.md)
	$(PY) bench/bench_migrate.py
	$(PY) bench/bench_reflink.py
	$(PY) bench/bench_verify.py

lint: venv
	.venv/bin/ruff check .

clean:
	rm -rf out build *.egg-info
