# pvezfsha: `make demo` (replication on the real-ZFS lab) and `make test`
# (fast tier on this machine, then the real-ZFS tier inside the lab).
# The lab needs root: it builds a Debian trixie guest with OpenZFS 2.3 and
# boots two of them under qemu (TCG). See README.md.

# The tests run with Debian's /usr/bin/python3 (pytest and loguru from
# python3-pytest and python3-loguru, installed by `make deps`). Another
# interpreter only when chosen on the command line: make PYTHON=~/venv/bin/python
# (a PYTHON in the environment, or the python3 first on PATH, is not used).
PYTHON  = /usr/bin/python3
# The tiers `make test` runs: make test TIERS="fast pkg" leaves out the lab.
TIERS   = fast pkg lab
LAB     := $(PYTHON) tests/lab/lab.py
OUT     := .test-out
NODES   ?= 2
VERSION := $(shell sed -n '1s/^[^(]*(\([^)]*\)).*/\1/p' packaging/debian/changelog)
DEB     := build/pvezfsha_$(VERSION)_all.deb

.PHONY: deps test test-fresh test-fast test-lab test-failover test-faults test-pkg deb lab-deb demo bench bench-agent bench-status lab-up lab-down lab-push clean

deps:
	tests/lab/host-deps.sh $(PYTHON) $(TIERS)

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

# The README's commands (the lab left out) as root in a clean bookworm root
# made by mmdebstrap: no step may depend on what this machine has.
test-fresh: SHELL := /bin/bash
test-fresh:
	@mkdir -p $(OUT)
	@tests/fresh/run.sh 2>&1 | tee $(OUT)/fresh.log; test $${PIPESTATUS[0]} -eq 0

lab-down:
	$(LAB) down

# The lab tier runs inside guest pve1; its summary line is taken from the
# guest's output with the CRs stripped, so the CI log shows the real counts.
# The failover tests power nodes off, so they are driven from the host.
test-lab: SHELL := /bin/bash
test-lab: lab-deb
	@mkdir -p $(OUT)
	@rc=0; $(LAB) run pve1 sh -c 'cd /opt/pvezfsha && PVEZFSHA_LAB=1 python3 -m pytest -v -p no:cacheprovider \
		tests/lab --ignore=tests/lab/test_failover.py --ignore=tests/lab/test_faults.py' 2>&1 | tee $(OUT)/lab.log; test $${PIPESTATUS[0]} -eq 0 || rc=1; \
	$(MAKE) --no-print-directory test-failover || rc=1; \
	$(MAKE) --no-print-directory test-faults || rc=1; exit $$rc

# The fault suite: 3 nodes whose /etc/pve is the emulated pmxcfs (--cfs), in
# a lab of its own. The 2-node lab is powered off first: five TCG guests on
# two cores would only slow both down.
FAULTS_LAB := PVEZFSHA_LAB_RUN=/tmp/pvezfsha-lab-faults PVEZFSHA_LAB_PORT_BASE=2320
test-faults: SHELL := /bin/bash
test-faults: deb
	@mkdir -p $(OUT)
	@$(LAB) down
	@trap 'cd $(CURDIR) && $(FAULTS_LAB) $(LAB) down' EXIT; \
	$(FAULTS_LAB) $(LAB) up --nodes 3 --cfs && $(FAULTS_LAB) $(LAB) install-deb $(DEB) && $(FAULTS_LAB) $(LAB) push && \
	cd tests/lab && $(FAULTS_LAB) PVEZFSHA_LAB=1 PVEZFSHA_LAB_HOST=1 PVEZFSHA_FAULTS_TABLE=../../$(OUT)/faults.md \
		$(PYTHON) -m pytest -v -p no:cacheprovider test_faults.py 2>&1 | tee ../../$(OUT)/faults.log; \
	test $${PIPESTATUS[0]} -eq 0

test-failover: SHELL := /bin/bash
test-failover:
	@mkdir -p $(OUT)
	@cd tests/lab && PVEZFSHA_LAB=1 PVEZFSHA_LAB_HOST=1 $(PYTHON) -m pytest -v -p no:cacheprovider test_failover.py \
		2>&1 | tee ../../$(OUT)/failover.log; test $${PIPESTATUS[0]} -eq 0

# Clears $(OUT), runs `make deps` and each tier, then one summary line per
# tier: pytest's own count, or `not run (<why>)` (tests/tiers.sh).
test:
	@OUT=$(OUT) MAKE='$(MAKE)' tests/tiers.sh $(TIERS)

# The demo: replication on the 2-node lab, then the drill (tests/lab/drill.py)
# on a 2-node lab whose /etc/pve is the emulated pmxcfs, driven from the host.
DRILL_LAB := PVEZFSHA_LAB_RUN=/tmp/pvezfsha-lab-drill PVEZFSHA_LAB_PORT_BASE=2420
demo: lab-deb
	@$(LAB) run pve1 python3 /opt/pvezfsha/tests/lab/demo.py
	@$(LAB) down
	@trap 'cd $(CURDIR) && $(DRILL_LAB) $(LAB) down' EXIT; \
	$(DRILL_LAB) $(LAB) up --nodes 2 --cfs && $(DRILL_LAB) $(LAB) install-deb $(DEB) && $(DRILL_LAB) $(LAB) push && \
	$(DRILL_LAB) $(PYTHON) tests/lab/drill.py

bench: lab-deb
	@$(LAB) run pve1 python3 /opt/pvezfsha/bench/bench_sync.py
	@$(PYTHON) bench/bench_takeover.py

# Continuous mode against timer mode and a bzfs tight loop (bench/bench_agent.py),
# about 25 minutes; results, table and plot in bench/results/.
# `pvezfsha status` at 20 datasets x 1,000 snapshots (bench/bench_status.py).
bench-status: SHELL := /bin/bash
bench-status: lab-deb
	@mkdir -p $(OUT)
	$(LAB) run pve1 python3 /opt/pvezfsha/bench/bench_status.py 2>&1 | tee $(OUT)/bench-status.log; test $${PIPESTATUS[0]} -eq 0
	$(PYTHON) bench/bench_status.py --report $(OUT)/bench-status.log

bench-agent: SHELL := /bin/bash
bench-agent: lab-deb
	@mkdir -p $(OUT)
	$(PYTHON) bench/bzfs_baseline.py
	$(LAB) run pve1 python3 /opt/pvezfsha/bench/bench_agent.py 2>&1 | tee $(OUT)/bench-agent.log; test $${PIPESTATUS[0]} -eq 0
	$(PYTHON) bench/agent_report.py $(OUT)/bench-agent.log

clean:
	rm -rf $(OUT)
