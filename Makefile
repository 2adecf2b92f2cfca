# modbot — the two commands a newcomer needs are `make run` and `make test`.
GO      ?= go
BIN     ?= bin
# -race needs cgo; go-sqlite3 needs it anyway.
export CGO_ENABLED := 1

.PHONY: build run test test-short chaos fuzz bench vet fmt clean

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
	$(GO) test -race -count=1 -timeout 20m ./chaos/
	$(MAKE) --no-print-directory fuzz FUZZTIME=10s

test-short:
	$(GO) test -count=1 -short ./...

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
# make test runs them for 10 s. Longer: make fuzz FUZZTIME=10m
FUZZTIME ?= 1m
fuzz:
	@set -e; for file in $$(grep -l '^func Fuzz' $$(git ls-files '*_test.go' 2>/dev/null || find . -name '*_test.go')); do \
	  pkg=./$$(dirname $$file); \
	  for f in $$(sed -n 's/^func \(Fuzz[A-Za-z0-9_]*\)(.*/\1/p' $$file); do \
	    echo "fuzz $$pkg $$f for $(FUZZTIME)"; \
	    $(GO) test -run '^$$' -fuzz "^$$f\$$" -fuzztime $(FUZZTIME) -fuzzminimizetime 5s $$pkg; \
	  done; \
	done

# Benchmarks: Go benchmarks for the hot paths, then the cluster benchmark
# tables (docs/benchmarks.md explains each figure and how to reproduce it).
bench: build
	@command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || (apt-get update -qq && apt-get install -y -qq nginx-light) || true
	$(GO) test -run '^$$' -bench . -benchtime 3x ./fsm/
	$(GO) test -run '^$$' -bench . -benchtime 2000x ./gatewaynode/guildstore/
	./$(BIN)/modbotbench

fmt:
	gofmt -w $$(git ls-files '*.go')

clean:
	rm -rf $(BIN) .modbot-dev
