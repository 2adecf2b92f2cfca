# modbot — the two commands a newcomer needs are `make run` and `make test`.
GO      ?= go
BIN     ?= bin
# -race needs cgo; go-sqlite3 needs it anyway.
export CGO_ENABLED := 1

.PHONY: build run test test-short bench vet fmt clean

build:
	$(GO) build -o $(BIN)/ ./cmd/...

# The whole system on this machine (modbot dev): config nodes on 127.0.0.1:8000-8002.
run: build
	./$(BIN)/modbot dev

# vet, then every test with the race detector. In CI (CI=true) a missing
# dependency fails the run instead of skipping.
test:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 40m ./...

test-short:
	$(GO) test -count=1 -short ./...

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
