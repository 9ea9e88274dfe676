# The two set-up commands: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# OpenMP threads that spin while waiting make PyTorch many times slower on shared or small CPUs.
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: test demo study study-h2 controls install bench

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# pip on these machines takes torch/torchvision from local disk; pin them so a resolver never picks a newer build.
	$(PY) -m pip install -q "torch==2.14.1" "torchvision==0.29.1" -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# Two workers (most tests wait on the job processes they start); a file's tests stay on one worker.
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=10 tests

# One sweep, a union of two grids (see experiments/demo.yaml), then its report.
demo: $(STAMP)
	$(PY) run.py -m +experiment=demo
	@echo "demo: records under results/runs/, report at reports/demo/report.md"

# The published small-scale study (experiments/cpu_study.yaml, ~75 min on 2 cores): report at reports/cpu_study/.
study: $(STAMP)
	$(PY) run.py -m +experiment=cpu_study task=shapes
	$(PY) run.py -m +experiment=cpu_study task=pathfinder 'task.image_size=[64,64],[128,128],[208,208]' \
	  task.train_size=4000 task.val_size=1000 trainer.epochs=1 task.distractors=0 task.curve_length=0.5
	@echo "study: report at reports/cpu_study/report.md"

# The H2 study (experiments/h2_occlusion.yaml, ~80 min on 2 idle cores): occluded-line completion at 96/192/384 px.
study-h2: $(STAMP)
	$(PY) run.py -m +experiment=h2_occlusion
	@echo "study-h2: report at reports/h2_occlusion/report.md"

# The two controls (experiments/controls.yaml, ~60 min on 2 cores): H3 on shapes, H2-iso on pathfinder.
CONTROLS_PATHFINDER := task=pathfinder 'task.image_size=[64,64],[128,128],[208,208]' task.train_size=4000 \
  task.val_size=1000 trainer.epochs=1 task.distractors=0 task.curve_length=0.5 seed=0,1,2
controls: $(STAMP)
	$(PY) run.py -m +experiment=controls task=shapes model.causal=true,false
	$(PY) run.py -m +experiment=controls $(CONTROLS_PATHFINDER) model.ssm=true,false
	$(PY) run.py -m +experiment=controls $(CONTROLS_PATHFINDER) model.match_macs=true
	@echo "controls: report at reports/controls/report.md"

bench: $(STAMP)
	$(PY) bench/bench_scan.py
	$(PY) bench/bench_arms.py
