# trustgate developer targets. `make test` is the test command the README
# gives and CI runs.
GO        ?= go
BIN       ?= bin/trustgate
FUZZTIME  ?= 10s
BENCHTIME ?= 1s
STATICCHECK ?= $(shell $(GO) env GOPATH)/bin/staticcheck

.PHONY: build test race bench fuzz lint tools e2e

build:
	$(GO) build -o $(BIN) ./cmd/trustgate

test:
	$(GO) test ./...

race:
	$(GO) test -race ./...

# The end-to-end suite on a real containerd, runc and the real gateway
# binary, then its benchmark (pod+container creation, interleaved: no
# plugin, a plugin through the gateway, the plugin direct). Needs root and
# what scripts/e2e-deps.sh installs.
E2E_TIMEOUT   ?= 10m
E2E_BENCHTIME ?= 3x
e2e:
	$(GO) test -tags e2e -count=1 -v -timeout $(E2E_TIMEOUT) -run . -bench . -benchtime $(E2E_BENCHTIME) ./e2e/...

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
	$(GO) vet -tags e2e ./e2e/...
	$(STATICCHECK) ./...
	$(STATICCHECK) -tags e2e ./e2e/...

tools:
	$(GO) install honnef.co/go/tools/cmd/staticcheck@v0.8.2
