# trustgate developer targets. `make test` is the test command the README
# gives and CI runs.
GO        ?= go
BIN       ?= bin/trustgate
FUZZTIME  ?= 10s
BENCHTIME ?= 1s
STATICCHECK ?= $(shell $(GO) env GOPATH)/bin/staticcheck

.PHONY: build test race bench fuzz lint tools

build:
	$(GO) build -o $(BIN) ./cmd/trustgate

test:
	$(GO) test ./...

race:
	$(GO) test -race ./...

# Benchmarks; compare runs with benchstat (make bench > new.txt).
bench:
	$(GO) test -run '^$$' -bench . -benchmem -benchtime $(BENCHTIME) ./...

# Every fuzz target for FUZZTIME each.
fuzz:
	scripts/fuzz.sh $(FUZZTIME)

lint:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go')); \
	  if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...
	$(STATICCHECK) ./...

tools:
	$(GO) install honnef.co/go/tools/cmd/staticcheck@v0.8.2
