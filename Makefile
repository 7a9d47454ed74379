# pvezfsha: `make demo` (replication on the real-ZFS lab) and `make test`
# (fast tier on this machine, then the real-ZFS tier inside the lab).
# The lab needs root: it builds a Debian trixie guest with OpenZFS 2.3 and
# boots two of them under qemu (TCG). See README.md.

PYTHON  ?= python3
LAB     := $(PYTHON) tests/lab/lab.py
OUT     := .test-out
NODES   ?= 2

.PHONY: deps test test-fast test-lab demo bench lab-up lab-down lab-push clean

deps:
	tests/lab/host-deps.sh

test-fast: SHELL := /bin/bash
test-fast:
	@mkdir -p $(OUT)
	@$(PYTHON) -m pytest -q tests 2>&1 | tee $(OUT)/fast.log; test $${PIPESTATUS[0]} -eq 0

lab-up: deps
	$(LAB) up --nodes $(NODES)
	$(LAB) push

lab-down:
	$(LAB) down

# The lab tier runs inside guest pve1; its summary line is taken from the
# guest's output with the CRs stripped, so the CI log shows the real counts.
test-lab: SHELL := /bin/bash
test-lab: lab-up
	@mkdir -p $(OUT)
	@$(LAB) run pve1 sh -c 'cd /opt/pvezfsha && PVEZFSHA_LAB=1 python3 -m pytest -v -p no:cacheprovider tests/lab' \
		2>&1 | tee $(OUT)/lab.log; test $${PIPESTATUS[0]} -eq 0

test: SHELL := /bin/bash
test: deps
	@rc=0; $(MAKE) --no-print-directory test-fast || rc=1; \
	$(MAKE) --no-print-directory test-lab || rc=1; \
	echo; echo "== summary =="; \
	echo "fast tier (this machine): $$(grep -E '^=*.* (passed|failed|error)' $(OUT)/fast.log | tail -1 | tr -d '\r=' | sed 's/^ *//')"; \
	echo "lab tier (real OpenZFS):  $$(grep -E '^=*.* (passed|failed|error)' $(OUT)/lab.log | tail -1 | tr -d '\r=' | sed 's/^ *//')"; \
	exit $$rc

demo: lab-up
	@$(LAB) run pve1 python3 /opt/pvezfsha/tests/lab/demo.py

bench: lab-up
	@$(LAB) run pve1 python3 /opt/pvezfsha/bench/bench_sync.py

clean:
	rm -rf $(OUT)
