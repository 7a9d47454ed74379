# pvezfsha: `make demo` (replication on the real-ZFS lab) and `make test`
# (fast tier on this machine, then the real-ZFS tier inside the lab).
# The lab needs root: it builds a Debian trixie guest with OpenZFS 2.3 and
# boots two of them under qemu (TCG). See README.md.

PYTHON  ?= python3
LAB     := $(PYTHON) tests/lab/lab.py
OUT     := .test-out
NODES   ?= 2
VERSION := $(shell sed -n '1s/^[^(]*(\([^)]*\)).*/\1/p' packaging/debian/changelog)
DEB     := build/pvezfsha_$(VERSION)_all.deb

.PHONY: deps test test-fast test-lab test-failover test-pkg deb lab-deb demo bench lab-up lab-down lab-push clean

deps:
	tests/lab/host-deps.sh

test-fast: SHELL := /bin/bash
test-fast:
	@mkdir -p $(OUT)
	@$(PYTHON) -m pytest -q tests 2>&1 | tee $(OUT)/fast.log; test $${PIPESTATUS[0]} -eq 0

lab-up: deps
	$(LAB) up --nodes $(NODES)
	$(LAB) push

# The Debian package (debhelper + pybuild), lintian-clean; build deps are
# installed by the script.
deb:
	packaging/build-deb.sh

# The lab runs the installed package, not the source tree: /opt/pvezfsha
# keeps only the tests, and /usr/bin/pvezfsha is the .deb's.
lab-deb: deb lab-up
	$(LAB) install-deb $(DEB)

# Package tier: the .deb installed into clean bookworm and trixie roots.
test-pkg: SHELL := /bin/bash
test-pkg: deb
	@mkdir -p $(OUT)
	@tests/pkg/run.sh $(DEB) 2>&1 | tee $(OUT)/pkg.log; test $${PIPESTATUS[0]} -eq 0

lab-down:
	$(LAB) down

# The lab tier runs inside guest pve1; its summary line is taken from the
# guest's output with the CRs stripped, so the CI log shows the real counts.
# The failover tests power nodes off, so they are driven from the host.
test-lab: SHELL := /bin/bash
test-lab: lab-deb
	@mkdir -p $(OUT)
	@rc=0; $(LAB) run pve1 sh -c 'cd /opt/pvezfsha && PVEZFSHA_LAB=1 python3 -m pytest -v -p no:cacheprovider \
		tests/lab --ignore=tests/lab/test_failover.py' 2>&1 | tee $(OUT)/lab.log; test $${PIPESTATUS[0]} -eq 0 || rc=1; \
	$(MAKE) --no-print-directory test-failover || rc=1; exit $$rc

test-failover: SHELL := /bin/bash
test-failover:
	@mkdir -p $(OUT)
	@cd tests/lab && PVEZFSHA_LAB=1 PVEZFSHA_LAB_HOST=1 $(PYTHON) -m pytest -v -p no:cacheprovider test_failover.py \
		2>&1 | tee ../../$(OUT)/failover.log; test $${PIPESTATUS[0]} -eq 0

test: SHELL := /bin/bash
test: deps
	@rc=0; $(MAKE) --no-print-directory test-fast || rc=1; \
	$(MAKE) --no-print-directory test-pkg || rc=1; \
	$(MAKE) --no-print-directory test-lab || rc=1; \
	echo; echo "== summary =="; \
	echo "fast tier (this machine): $$(grep -E '^=*.* (passed|failed|error)' $(OUT)/fast.log | tail -1 | tr -d '\r=' | sed 's/^ *//')"; \
	echo "package tier (bookworm, trixie roots): $$(grep -E '^pkg: [0-9]+ passed' $(OUT)/pkg.log | tail -1)"; \
	echo "lab tier (real OpenZFS, in pve1):  $$(grep -E '^=*.* (passed|failed|error)' $(OUT)/lab.log | tail -1 | tr -d '\r=' | sed 's/^ *//')"; \
	echo "lab failover tier (real OpenZFS, host-driven, power cuts): $$(grep -E '^=*.* (passed|failed|error)' $(OUT)/failover.log | tail -1 | tr -d '\r=' | sed 's/^ *//')"; \
	exit $$rc

demo: lab-deb
	@$(LAB) run pve1 python3 /opt/pvezfsha/tests/lab/demo.py
	@$(PYTHON) tests/lab/demo_failover.py

bench: lab-deb
	@$(LAB) run pve1 python3 /opt/pvezfsha/bench/bench_sync.py
	@$(PYTHON) bench/bench_takeover.py

clean:
	rm -rf $(OUT)
