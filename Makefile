# modbot — the two commands a newcomer needs are `make run` and `make test`.
GO      ?= go
BIN     ?= bin
# -race needs cgo; go-sqlite3 needs it anyway.
export CGO_ENABLED := 1

.PHONY: build run test test-short test-deploy chaos fuzz bench bench-etcd vet fmt clean

build:
	$(GO) build -o $(BIN)/ ./cmd/...

# The whole system on this machine (modbot dev): config nodes on 127.0.0.1:8000-8002.
run: build
	./$(BIN)/modbot dev

# vet, then every test with the race detector. In CI (CI=true) a missing
# dependency fails the run instead of skipping. The fault tier (chaos/: a
# dozen processes per run) goes after the rest, not beside the in-process
# end-to-end tests: two cores cannot starve both and stay meaningful.
test:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 40m $$($(GO) list ./... | grep -v '/chaos$$')
	cd deploy && $(GO) vet ./... && $(GO) test -count=1 -timeout 10m ./...
	cd deploy/grafana && $(GO) vet ./... && $(GO) test -race -count=1 -timeout 10m ./...
	cd e2e/browser && $(GO) vet ./... && $(GO) test -count=1 ./...
	cd benchmarks/etcdwatch && $(GO) vet ./... && $(GO) test -race -count=1 -timeout 10m ./...
	$(GO) test -race -count=1 -timeout 20m ./chaos/
	$(MAKE) --no-print-directory fuzz FUZZTIME=10s

test-short:
	$(GO) test -count=1 -short ./...
	cd deploy/grafana && $(GO) test -count=1 -short ./...

# The deployment artefacts alone (Dockerfile, deploy/statefulsets,
# deploy/monitoring): a module of its own, see deploy/doc.go.
test-deploy:
	cd deploy && $(GO) vet ./... && $(GO) test -count=1 -timeout 10m ./...

# The long fault tier (docs/reliability.md): linearizability runs of the
# control plane and whole-system chaos schedules, real processes in network
# namespaces (root). make test runs a short version of both. A failing seed
# replays with: go test ./chaos/ -run TestChaosSchedules -v -args -seed N
# RACE=1 builds the components with the race detector.
LIN_RUNS ?= 10
SEEDS    ?= 200
RACE     ?=
chaos:
	$(GO) test -count=1 -timeout 6h -v -run 'TestControlPlaneIsLinearizableUnderFaults|TestChaosSchedules' ./chaos/ \
	  -args -lin-runs $(LIN_RUNS) -lin-duration 30s -seeds $(SEEDS) -report chaos-report.jsonl $(if $(RACE),-race-bin)

# Every Go fuzz target (func FuzzXxx in a _test.go file) for FUZZTIME each;
# make test runs them for 10 s. Longer: make fuzz FUZZTIME=10m. .ci/fuzz-one
# runs a target again only when Go's own -fuzztime race failed it with no
# crasher (golang/go#75804); any finding fails at once.
FUZZTIME ?= 1m
fuzz:
	@set -e; for file in $$(grep -l '^func Fuzz' $$(git ls-files '*_test.go' 2>/dev/null || find . -name '*_test.go')); do \
	  pkg=./$$(dirname $$file); \
	  for f in $$(sed -n 's/^func \(Fuzz[A-Za-z0-9_]*\)(.*/\1/p' $$file); do \
	    echo "fuzz $$pkg $$f for $(FUZZTIME)"; \
	    bash .ci/fuzz-one $(GO) $$pkg $$f $(FUZZTIME); \
	  done; \
	done

# Benchmarks: Go benchmarks for the hot paths, then the cluster benchmark
# tables (docs/benchmarks.md explains each figure and how to reproduce it).
bench: build
	@command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || (apt-get update -qq && apt-get install -y -qq nginx-light) || true
	$(GO) test -run '^$$' -bench . -benchtime 3x ./fsm/
	$(GO) test -run '^$$' -bench . -benchtime 2000x ./gatewaynode/guildstore/
	rm -f $(BENCH_FIGURES)
	./$(BIN)/modbotbench -figures $(BENCH_FIGURES)
	$(MAKE) --no-print-directory bench-etcd ETCDWATCH_FLAGS="$(ETCDWATCH_FLAGS) -figures $(BENCH_FIGURES)"
	@echo; echo "Issue 18, every figure from this run:"; echo
	./$(BIN)/modbotbench -issue18 $(BENCH_FIGURES)

# The figures of issue 18's table, merged by each benchmark of make bench.
BENCH_FIGURES ?= $(CURDIR)/$(BIN)/bench-figures.json

# Watch fan-out side by side with etcd embedded (3 members), in one run: a
# module of its own (benchmarks/etcdwatch) so the main module never carries
# etcd. ETCDWATCH_FLAGS="-runs 1 -watchers 1000" for a shorter run.
ETCDWATCH_FLAGS ?=
bench-etcd:
	cd benchmarks/etcdwatch && $(GO) run . $(ETCDWATCH_FLAGS)

fmt:
	gofmt -w $$(git ls-files '*.go')

clean:
	rm -rf $(BIN) .modbot-dev
