GO      ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)

.PHONY: all build test vet fmt fuzz bench demo clean

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o hipsterd ./cmd/hipsterd
	$(GO) build -o hipster-demo ./cmd/hipster-demo

# The whole suite, with the race detector, plus the static checks.
test: vet
	@test -z "$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))" || { gofmt -l .; echo 'gofmt: files above need formatting'; exit 1; }
	$(GO) test -race -count=1 ./...

vet:
	$(GO) vet ./...

fmt:
	gofmt -w .

fuzz:
	$(GO) test -run '^$$' -fuzz FuzzParse -fuzztime 30s ./internal/config

# Go benchmarks of the hot paths, with allocations per operation.
bench:
	$(GO) test -run '^$$' -bench . -benchmem ./...

# Runs hipsterd on configs/hipster.ini in front of two demo backends.
demo: build
	./scripts/demo.sh

clean:
	rm -f hipsterd hipster-demo hipsterd-access.log
