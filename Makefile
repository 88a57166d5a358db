# multinic: build, test and demo targets. `make help` lists them.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

GO        ?= go
BIN       := bin
BINARIES  := fake-ec2 multinic multinic-agent multinic-nri
# Packages whose tests need kernel features this host lacks (ipvlan, dummy, vlan): run in the test VM.
VM_PKGS   ?= ./plugin/ ./e2e/nodes/
GOTEST    ?= $(GO) test -count=1
# The build tag of the e2e suites' test files (e2e/cluster's e2e tests, e2e/multus, e2e/realnode, e2e/faults'
# TestReclaimAPIView): `go test ./...` leaves them out; the e2e targets pass it and `make lint` vets with it.
E2E_TAGS  := e2e
# The multinic image's reference (`make image`); manifests/kustomization.yaml's `images:` names the same.
IMAGE     ?= ghcr.io/multinic/multinic:dev
# Fuzz targets as package:Target; `make test` runs each briefly, `make fuzz` for FUZZTIME each.
FUZZ_TARGETS := ./netconf/:FuzzLoadConf ./plugin/:FuzzParseArgs ./ipam/server/:FuzzDecodeAllocateRequest ./internal/testing/fakeec2/:FuzzQuery
FUZZTIME  ?= 5m
# Packages whose tests talk to fake-ec2 on this host (not in the VM), and the lag test-lag gives it.
LAG_PKGS  ?= ./ipam/eni/ ./cmd/multinic-agent/ ./e2e/faults/ ./internal/testing/harness/ ./internal/testing/fabric/ ./e2e/traffic/ ./e2e/bench/
FAKE_EC2_LAG ?= 2s
# The fault suite's ipvlan cases (subtests "ipvlan"), which only the test VM can finish (e2e/bench/run.sh too).
FAULTS_IPVLAN := ^(TestEC2ServerError|TestThrottle|TestRecoverCheckpoint)$$/^ipvlan$$

.PHONY: help build image test test-unit test-lag test-vm test-fuzz e2e e2e-dra e2e-node e2e-vm bench demo lint fuzz clean

help: ## list the targets
	@awk -F':.*## ' '/^[a-z0-9-]+:.*## /{printf "  %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# Static, as the image, the Dockerfile and the tests build them (internal/gobuild): the plugin copied to a node
# runs on whatever libc the node has, and bin/ then holds the binaries the image ships, not a cgo variant.
build: ## build every binary into bin/ (static, CGO_ENABLED=0, as the image)
	@mkdir -p $(BIN)
	CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN)/ $(addprefix ./cmd/,$(BINARIES))

image: ## the multinic image (agent + plugin + NRI plugin, static, empty base, no Docker) as a docker-archive: bin/multinic-image.tar, tagged IMAGE
	CGO_ENABLED=0 $(GO) run -trimpath ./tools/mkimage -image multinic -tag $(IMAGE) -out $(BIN)/multinic-image.tar

test: lint build test-unit test-lag test-vm test-fuzz e2e e2e-dra e2e-node ## the whole suite CI runs: lint, unit + root tests, the same against a lagging EC2, kernel tests in the VM, short fuzzing, e2e, the DRA e2e, real nodes
	@echo "make test: all suites passed"

test-unit: ## unit tests, plus root tests in throwaway netns when run as root
	$(GOTEST) -race ./...

test-lag: ## the tests that talk to fake-ec2 again, its Describe* and IMDS FAKE_EC2_LAG (2s) behind every change
	MULTINIC_FAKE_EC2_LAG=$(FAKE_EC2_LAG) $(GOTEST) $(LAG_PKGS)

test-vm: ## tests that need ipvlan/dummy/vlan, inside a QEMU VM with Debian's kernel
	bash e2e/vm/vmtest.sh $(VM_PKGS)
	bash e2e/bench/run.sh refs # the reference plugins TestLatencyIPVlan execs, static, for the guest
	MULTINIC_VM_TESTFLAGS='-test.run ^(TestLatencyIPVlan|TestBandwidthScaling|TestBandwidthIPVlanVsExclusive)$$' \
	  bash e2e/vm/vmtest.sh ./e2e/bench/
	MULTINIC_VM_TESTFLAGS='-test.run $(FAULTS_IPVLAN)' bash e2e/vm/vmtest.sh ./e2e/faults/

# A count, not a duration: with -fuzztime 5s, Go 1.26's fuzz coordinator can fail a target with a bare "context
# deadline exceeded" when the deadline races a busy worker (go.dev/issue/75804, fixed in Go 1.27); seen in CI.
test-fuzz: ## every fuzz target for 20,000 executions (a few seconds; the committed seed corpus also runs in test-unit)
	@$(MAKE) --no-print-directory fuzz FUZZTIME=20000x

e2e: ## real kube-apiserver, etcd and Multus (built once into ~/.cache/multinic/tools), end to end
	bash e2e/tools/build.sh
	MULTINIC_E2E=1 $(GOTEST) -tags $(E2E_TAGS) -p 1 -timeout 20m ./e2e/cluster/ ./e2e/multus/
	MULTINIC_E2E=1 $(GOTEST) -tags $(E2E_TAGS) -timeout 10m -run '^TestReclaimAPIView$$' ./e2e/faults/

e2e-dra: ## the DRA driver against a real kube-apiserver, kube-scheduler and kube-controller-manager: ResourceSlices, the example claims allocated
	bash e2e/tools/build.sh kube-apiserver etcd kube-node
	MULTINIC_E2E=1 $(GOTEST) -tags $(E2E_TAGS) -timeout 10m ./e2e/dra/

e2e-node: image ## manifests/ applied with kubectl on two real kubelet + containerd nodes (fake-ec2 instances), Multus thin and thick
	bash e2e/tools/build.sh node
	MULTINIC_TOOLS_STATIC=1 bash e2e/tools/build.sh multus # the Multus images have an empty base: no libc
	MULTINIC_E2E_NODE=1 $(GOTEST) -tags $(E2E_TAGS) -timeout 15m -run '^TestRealNodes$$' ./e2e/realnode/

e2e-vm: ## the Multus e2e cases with ipvlan NADs inside the test VM (control plane on the host; ~2-3 min)
	bash e2e/tools/build.sh
	MULTINIC_E2E=1 MULTINIC_E2E_VM=1 $(GOTEST) -tags $(E2E_TAGS) -timeout 20m -run 'TestMultinicThroughMultusIPVlanVM' ./e2e/multus/

bench: ## benchmarks (issue 6: figures 1-5; issue 13: 6 scale-up, 7 p5 node; issue 15: 8 a 7-card pod to Running, DRA + NRI vs DRA + Multus, on the real nodes; the fault suite's long variants; root; host + test VM) into BENCHMARKS.md
	bash e2e/bench/run.sh

# Flags of the demo, e.g. DEMO_FLAGS="-rate-per-card 50000000 -conns 8" (bin/demo -h lists them).
DEMO_FLAGS ?=
# One build configuration (static, trimmed) for the demo and every binary it runs, on the host or in the
# test VM (e2e/vm/vmtest.sh --run builds the same way): a cold build compiles the dependencies once.
demo: ## fake-ec2 trn1.32xlarge, the agent, 4 pods on every card, per-card throughput over 1/2/4/7 cards (in the test VM without ipvlan)
	@mkdir -p $(BIN)
	CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN)/demo ./e2e/demo
	CGO_ENABLED=0 $(BIN)/demo $(DEMO_FLAGS)

lint: ## gofmt, go vet (also with the e2e build tag), and every import pointing down (the rules in tools/layers)
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags $(E2E_TAGS) ./...
	$(GOTEST) ./tools/layers/

fuzz: ## run every fuzz target for FUZZTIME (default 5m); crashers land in testdata/fuzz as regression inputs
	@for t in $(FUZZ_TARGETS); do \
	  pkg=$${t%%:*}; name=$${t##*:}; echo "fuzz $$name ($$pkg) for $(FUZZTIME)"; \
	  $(GO) test -run '^$$' -fuzz "^$$name$$" -fuzztime $(FUZZTIME) "$$pkg" || exit 1; \
	done

clean: ## remove build outputs (the VM kernel cache lives outside the checkout)
	rm -rf $(BIN) .vmtest
