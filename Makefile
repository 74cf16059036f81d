# gradebroker's build. `make help` lists the targets.

SHELL := /bin/bash
.DEFAULT_GOAL := build

# Code-generation tools, pinned; `make tools` installs them into .tmp/bin.
BUF_VERSION            := v1.75.0
PROTOC_GEN_GO_VERSION  := v1.36.12
PROTOC_GEN_GRPC_VERSION := v1.6.2
GRPC_GATEWAY_VERSION   := v2.32.0

TMP_BIN := $(CURDIR)/.tmp/bin
BUF     := $(TMP_BIN)/buf
GO      ?= go

.PHONY: help
help: ## List the targets.
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: build
build: ## Build bin/broker, bin/graderd, bin/gb-scenario-runner, bin/samplegrader and bin/gbpod (needs Go and gcc).
	$(GO) build -o bin/broker ./broker/cmd/broker
	$(GO) build -o bin/graderd ./graderd/cmd/graderd
	CGO_ENABLED=0 $(GO) build -trimpath -o bin/gb-scenario-runner ./graderd/cmd/gb-scenario-runner
	$(GO) build -o bin/samplegrader ./examples/samplegrader
	CGO_ENABLED=0 $(GO) build -o bin/gbpod ./graderd/cmd/gbpod

.PHONY: run
run: build ## Run a broker, one graderd and the sample grader on embedded defaults (Ctrl-C stops).
	bash scripts/demo.sh run

.PHONY: demo
demo: build ## Grade one job end to end through the REST gateway, print the result, stop.
	bash scripts/demo.sh demo

.PHONY: scenarios-demo
scenarios-demo: build ## Grade the sample service's correct and buggy variants by HTTP scenarios (needs a Docker engine).
	bash scripts/scenarios-demo.sh

.PHONY: dev-pki
dev-pki: ## Make a development CA, certificates and token keys in ./dev.
	bash scripts/gb-dev-pki.sh dev

.PHONY: test
test: ## Set up what the tests need (scripts/test-env.sh), vet, then run every test with the race detector.
	bash scripts/test-env.sh $(MAKE) --no-print-directory test-run

.PHONY: test-run
test-run: ## Vet, then run every test with the race detector, on a machine already set up.
	$(GO) vet ./...
	$(GO) test -race -shuffle=on -count=1 -timeout 20m ./...

.PHONY: test-short
test-short: ## Run the tests without the slow suites.
	$(GO) test -short -count=1 ./...

IMAGE ?= gradebroker/graderd:dev

.PHONY: image
image: ## Build graderd's container image (graderd and gbpod, static) for deploy/kubernetes as $(IMAGE).
	mkdir -p bin/static
	CGO_ENABLED=0 $(GO) build -o bin/static/graderd ./graderd/cmd/graderd
	CGO_ENABLED=0 $(GO) build -o bin/static/gbpod ./graderd/cmd/gbpod
	docker build -f deploy/kubernetes/Dockerfile -t $(IMAGE) bin/static

.PHONY: kube-apiserver
kube-apiserver: ## Build kube-apiserver for the Kubernetes tests, cached outside the checkout (cold: ~10 min).
	bash scripts/kube-apiserver.sh

.PHONY: bench
bench: build ## Run the benchmarks and print their tables.
	$(GO) run ./bench/cmd/gbbench

# Mutation testing (CONTRIBUTING.md, "Mutation testing"): not part of test or
# CI. MUTATION names the packages to run, one after another.
GREMLINS_VERSION := v0.6.0
GREMLINS         ?= $(TMP_BIN)/gremlins
MUTATION         ?= token dispatch store graderd
MUTATION_WORKERS ?= 2
# Per package: the time limit per mutant (a multiple of the package's
# coverage run) and what is left out, and why, is in CONTRIBUTING.md.
mutation_token    = --timeout-coefficient 20 -E '^tokentest/' ./broker/token
mutation_dispatch = --timeout-coefficient 20 -E '^(api|metrics|ops|session|wakeup|writer|pull)\.go$$' ./broker/dispatch
mutation_store    = --timeout-coefficient 20 ./broker/store
mutation_graderd  = --timeout-coefficient 8 -E '^(executor|spool|cmd)/' -E '^(config|cli|daemon|wakeup)\.go$$' ./graderd
# gremlins' coverage run covers graderd/..., where this docker test fails
# under load (CONTRIBUTING.md); it is not one of the tests run per mutant.
mutation_skip_graderd = -skip=^TestEscapePidsLimitAsAWhole$$

.PHONY: mutation
mutation: $(GREMLINS) ## Mutation-test token, dispatch, store and graderd with gremlins (an hour or more; MUTATION=token for one).
	@mkdir -p .tmp/mutation
	set -o pipefail; $(foreach p,$(MUTATION),echo "== $(p)" && GOFLAGS='-count=1 $(mutation_skip_$(p))' $(GREMLINS) unleash --workers $(MUTATION_WORKERS) -o .tmp/mutation/$(p).json $(mutation_$(p)) | tee .tmp/mutation/$(p).txt &&) true

$(GREMLINS):
	GOBIN=$(TMP_BIN) $(GO) install github.com/go-gremlins/gremlins/cmd/gremlins@$(GREMLINS_VERSION)

.PHONY: tools
tools: $(BUF) $(TMP_BIN)/protoc-gen-go $(TMP_BIN)/protoc-gen-go-grpc $(TMP_BIN)/protoc-gen-grpc-gateway $(TMP_BIN)/protoc-gen-openapiv2 ## Install the pinned code-generation tools into .tmp/bin.

$(BUF):
	GOBIN=$(TMP_BIN) $(GO) install github.com/bufbuild/buf/cmd/buf@$(BUF_VERSION)
$(TMP_BIN)/protoc-gen-go:
	GOBIN=$(TMP_BIN) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
$(TMP_BIN)/protoc-gen-go-grpc:
	GOBIN=$(TMP_BIN) $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GRPC_VERSION)
$(TMP_BIN)/protoc-gen-grpc-gateway:
	GOBIN=$(TMP_BIN) $(GO) install github.com/grpc-ecosystem/grpc-gateway/v2/protoc-gen-grpc-gateway@$(GRPC_GATEWAY_VERSION)
$(TMP_BIN)/protoc-gen-openapiv2:
	GOBIN=$(TMP_BIN) $(GO) install github.com/grpc-ecosystem/grpc-gateway/v2/protoc-gen-openapiv2@$(GRPC_GATEWAY_VERSION)

.PHONY: gen
gen: tools ## Regenerate gen/ from proto/.
	$(BUF) format -w
	$(BUF) generate

.PHONY: lint
lint: tools ## buf lint, buf format, gofmt and go vet.
	$(BUF) lint
	$(BUF) format -d --exit-code
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '^gen/')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

.PHONY: check
check: tools lint ## Regenerate and fail on any difference from what is committed; lint.
	$(BUF) generate
	@if [ -n "$$(git status --porcelain -- gen)" ]; then echo "gen/ is out of date with proto/: run 'make gen' and commit:"; git status --porcelain -- gen; git diff --stat -- gen; exit 1; fi
	@echo "gen/ is up to date"

.PHONY: clean
clean: ## Remove build outputs.
	rm -rf bin
