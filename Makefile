# multinic: build, test and demo targets. `make help` lists them.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

GO        ?= go
BIN       := bin
BINARIES  := fake-ec2
# Packages whose tests need kernel features this host lacks (ipvlan, dummy, vlan): run in the test VM.
VM_PKGS   ?= ./plugin/
GOTEST    ?= $(GO) test -count=1

.PHONY: help build test test-unit test-vm e2e bench demo lint fuzz clean

help: ## list the targets
	@awk -F':.*## ' '/^[a-z0-9-]+:.*## /{printf "  %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

build: ## build every binary into bin/
	@mkdir -p $(BIN)
	$(GO) build -trimpath -o $(BIN)/ $(addprefix ./cmd/,$(BINARIES))

test: lint build test-unit test-vm ## the whole suite CI runs: lint, unit and root tests on the host, kernel tests in the VM
	@echo "make test: all suites passed"

test-unit: ## unit tests, plus root tests in throwaway netns when run as root
	$(GOTEST) -race ./...

test-vm: ## tests that need ipvlan/dummy/vlan, inside a QEMU VM with Debian's kernel
	bash e2e/vm/vmtest.sh $(VM_PKGS)

e2e: ## real kube-apiserver + Multus end to end (issue 5)
	@echo "make e2e: not built yet: the Multus/kube-apiserver e2e lands with issue 5"

bench: ## benchmarks into BENCHMARKS.md (issue 6)
	@echo "make bench: not built yet: benchmarks land with issue 6"

demo: build ## fake-ec2 with real ENI links on every card of a trn1.32xlarge, then teardown
	$(GO) run ./e2e/demo

lint: ## gofmt and go vet
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

fuzz: ## fuzz targets (issue 6)
	@echo "make fuzz: not built yet: fuzz targets land with issues 4 and 6"

clean: ## remove build outputs (the VM kernel cache lives outside the checkout)
	rm -rf $(BIN) .vmtest
