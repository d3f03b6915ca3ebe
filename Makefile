# depbridge: Kubernetes dependency changes as CloudEvents on NATS, Kafka or HTTP.
#
#   make demo    throwaway control plane + embedded NATS, live CloudEvents on screen
#   make test    every test under -race, against a real kube-apiserver and etcd
#   make test-faults  the fault suite alone (kill, broker outage, API server restart, 410, leader kill); writes test/faults/results.md
#   make bench   benchmark tables
#   make bench-compare   depbridge vs kubernetes-dependency-watches vs a bare watch (bench/)
#   make lint    gofmt, go vet, staticcheck
#
#   needs Go >= 1.26 and, on Debian/Ubuntu: sudo apt-get install -y make gcc libc6-dev git curl openssl ca-certificates
#
# gcc and libc6-dev: cgo, which -race needs; curl and openssl: the demo's
# control plane. test and demo check them first (hack/prereqs.sh).

SHELL := /usr/bin/env bash
GO    ?= go

K8S_VERSION  ?= v1.37.1
ETCD_VERSION ?= v3.7.3
CACHE_DIR    ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/depbridge
# kube-apiserver, etcd and kubectl, built once per machine from the Go module
# proxy into K8S_ASSETS and shared by every clone.
#
# Or set KUBEBUILDER_ASSETS (environment or make command line) to a directory
# of your own holding kube-apiserver and etcd (e.g. from setup-envtest): make
# then only checks that both are there and executable, and fails saying which
# is missing if not; it never builds, writes or replaces anything there (the
# demo takes kubectl from there or from PATH).
K8S_ASSETS   ?= $(CACHE_DIR)/k8s-$(K8S_VERSION)-etcd-$(ETCD_VERSION)
ifeq ($(strip $(KUBEBUILDER_ASSETS)),)
override KUBEBUILDER_ASSETS := $(K8S_ASSETS)
endif
ifeq ($(abspath $(KUBEBUILDER_ASSETS)),$(abspath $(K8S_ASSETS)))
K8S_BINARIES := build
else
K8S_BINARIES := check
endif
export KUBEBUILDER_ASSETS

STATICCHECK_VERSION ?= v0.8.2
TEST_TIMEOUT ?= 30m
TEST_FLAGS   ?=
BENCH        ?= .
VERSION      ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS      := -X github.com/depbridge/depbridge/internal/version.Version=$(VERSION)

.PHONY: all build test test-faults bench bench-compare lint fmt fuzz demo image k8s-binaries prereqs-test prereqs-demo clean help

# The prerequisites of these run in order, so that a missing tool is named
# before a long build starts.
.NOTPARALLEL: test test-faults demo

all: build

help:
	@sed -n 's/^#   //p' $(MAKEFILE_LIST)

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/bridge ./cmd/bridge

# k8s-binaries builds kube-apiserver, etcd and kubectl into $(K8S_ASSETS)
# unless binaries of the pinned versions are already there; with
# KUBEBUILDER_ASSETS set elsewhere, it only checks kube-apiserver and etcd
# there (hack/k8s-binaries.sh --check).
k8s-binaries:
ifeq ($(K8S_BINARIES),build)
	@K8S_VERSION=$(K8S_VERSION) ETCD_VERSION=$(ETCD_VERSION) WITH_KUBECTL=1 hack/k8s-binaries.sh "$(KUBEBUILDER_ASSETS)"
else
	@K8S_VERSION=$(K8S_VERSION) ETCD_VERSION=$(ETCD_VERSION) WITH_KUBECTL=1 hack/k8s-binaries.sh --check "$(KUBEBUILDER_ASSETS)"
endif

# prereqs-test: go and cgo (-race); prereqs-demo: go, openssl, curl, awk.
prereqs-test prereqs-demo:
	@GO=$(GO) hack/prereqs.sh $(@:prereqs-%=%)

test: prereqs-test k8s-binaries
	$(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) $(TEST_FLAGS) ./...

# test-faults runs the fault suite (issue 5: real processes, faults repeated,
# 0 lost) and writes its results table to test/faults/results.md. make test
# runs it too, with every other test.
test-faults: prereqs-test k8s-binaries
	FAULTS_RESULTS=$(CURDIR)/test/faults/results.md $(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) -v -run '^TestFaults$$' $(TEST_FLAGS) ./test/faults

bench: k8s-binaries
	$(GO) test -run '^$$' -bench '$(BENCH)' -benchtime 1x -count 1 -timeout 60m ./... | $(GO) run ./hack/benchtable

# bench-compare runs the side-by-side benchmark in bench/ (its own Go
# module) and writes its table to bench/results/. BENCH_COMPARE_FLAGS, e.g.
# "-w 100 -runs 1", make it shorter.
BENCH_COMPARE_FLAGS ?=
bench-compare: k8s-binaries
	cd bench && $(GO) run ./cmd/compare $(BENCH_COMPARE_FLAGS)

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...

fmt:
	gofmt -w $$(git ls-files '*.go')

FUZZTIME ?= 30s
fuzz:
	@GO=$(GO) hack/fuzz.sh $(FUZZTIME)

demo: prereqs-demo build k8s-binaries
	@hack/demo.sh "$(KUBEBUILDER_ASSETS)"

# image builds the container image (needs a Docker engine).
IMAGE ?= depbridge:$(VERSION)
image:
	docker build --build-arg VERSION=$(VERSION) -t $(IMAGE) .

clean:
	rm -rf bin
