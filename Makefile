GO      ?= go
BIN     ?= bin
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)

.PHONY: all build run test bench bench-discovery lint fuzz clean testssl

all: build

build:
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o $(BIN)/sekisho ./cmd/sekisho
	$(GO) build -o $(BIN)/sekisho-echo ./cmd/sekisho-echo

# The demo: sekisho-echo backends behind config.example.yaml.
run: build
	BIN=$(BIN) bash scripts/demo.sh

# Every test, with the race detector. -race needs cgo, so a C compiler: the
# Go machines here ship gcc; a bare one gets it from Debian's packages.
test:
	@command -v gcc >/dev/null 2>&1 || command -v cc >/dev/null 2>&1 || \
		{ echo "make test: installing gcc (needed by go test -race)"; apt-get update -qq && apt-get install -y -qq gcc >/dev/null; }
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 8m ./...

# End-to-end load against nginx, haproxy and caddy (installs them from Debian if missing).
bench: build
	bash bench/run.sh

# The Go benchmarks behind bench/RESULTS.md's "Discovery" section: a DNS
# change to traffic (20 rounds, without and with probes), and the CPU and
# memory of re-resolving 100 pools every second. About 100 s; safe to run
# while nothing else loads the machine.
bench-discovery:
	$(GO) test -run '^$$' -bench 'DiscoveryChangeToTraffic|Discovery100Pools' -benchtime=1x -timeout 5m ./proxy/

# testssl.sh's protocol, cipher and vulnerability checks against TLS listeners on
# 127.0.0.1 (installs Debian's testssl.sh if missing); see docs/tls.md.
testssl: build
	@command -v testssl >/dev/null 2>&1 || \
		{ echo "make testssl: installing testssl.sh"; apt-get update -qq && apt-get install -y -qq testssl.sh >/dev/null; }
	BIN=$(BIN) bash scripts/testssl.sh

lint:
	@test -z "$$(gofmt -l .)" || (gofmt -l . && exit 1)
	$(GO) vet ./...

# Every fuzz target of every package (found by go test -list, so none is
# left out), each for FUZZTIME (default 20s).
FUZZTIME ?= 20s
fuzz:
	GO=$(GO) FUZZTIME=$(FUZZTIME) bash scripts/fuzz.sh

clean:
	rm -rf $(BIN) .demo
