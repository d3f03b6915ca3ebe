# depbridge: Kubernetes dependency changes as CloudEvents on NATS, Kafka or HTTP.
#
#   make demo    throwaway control plane + embedded NATS, live CloudEvents on screen
#   make test    every test under -race, against a real kube-apiserver and etcd
#   make test-faults  the fault suite alone (kill, broker outage, API server restart, 410, leader kill); writes test/faults/results.md
#   make bench   benchmark tables
#   make bench-compare   depbridge vs kubernetes-dependency-watches vs a bare watch (bench/)
#   make lint    gofmt, go vet, staticcheck

SHELL := /usr/bin/env bash
GO    ?= go

K8S_VERSION  ?= v1.37.1
ETCD_VERSION ?= v3.7.3
CACHE_DIR    ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/depbridge
# kube-apiserver, etcd and kubectl, built once per machine from the Go module
# proxy and shared by every clone. Set KUBEBUILDER_ASSETS to use binaries of
# your own instead.
K8S_ASSETS   ?= $(CACHE_DIR)/k8s-$(K8S_VERSION)-etcd-$(ETCD_VERSION)
export KUBEBUILDER_ASSETS ?= $(K8S_ASSETS)

STATICCHECK_VERSION ?= v0.8.2
TEST_TIMEOUT ?= 30m
TEST_FLAGS   ?=
BENCH        ?= .
VERSION      ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS      := -X github.com/depbridge/depbridge/internal/version.Version=$(VERSION)

.PHONY: all build test test-faults bench bench-compare lint fmt fuzz demo image k8s-binaries clean help

all: build

help:
	@sed -n 's/^#   //p' $(MAKEFILE_LIST)

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/bridge ./cmd/bridge

# k8s-binaries builds kube-apiserver, etcd and kubectl into $(KUBEBUILDER_ASSETS)
# unless binaries of the pinned versions are already there.
k8s-binaries:
	@K8S_VERSION=$(K8S_VERSION) ETCD_VERSION=$(ETCD_VERSION) WITH_KUBECTL=1 hack/k8s-binaries.sh "$(KUBEBUILDER_ASSETS)"

test: k8s-binaries
	$(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) $(TEST_FLAGS) ./...

# test-faults runs the fault suite (issue 5: real processes, faults repeated,
# 0 lost) and writes its results table to test/faults/results.md. make test
# runs it too, with every other test.
test-faults: k8s-binaries
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

demo: build k8s-binaries
	@hack/demo.sh "$(KUBEBUILDER_ASSETS)"

# image builds the container image (needs a Docker engine).
IMAGE ?= depbridge:$(VERSION)
image:
	docker build --build-arg VERSION=$(VERSION) -t $(IMAGE) .

clean:
	rm -rf bin
