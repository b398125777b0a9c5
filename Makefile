# OptiInfra Orchestrator. `make help` lists the targets.

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

MODULE     := github.com/optiinfra/orchestrator
# The release version is the chart's appVersion: the one place to bump it.
VERSION    ?= $(shell awk -F'"' '/^appVersion:/ {print $$2}' charts/orchestrator/Chart.yaml)
COMMIT     ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
# The commit's date, not the clock: the same commit builds the same binary,
# and image builds can reuse their cached layers.
BUILD_DATE ?= $(shell TZ=UTC git show -s --format=%cd --date=format-local:%Y-%m-%dT%H:%M:%SZ HEAD 2>/dev/null || echo unknown)
LDFLAGS    := -X $(MODULE)/internal/buildinfo.version=$(VERSION) \
              -X $(MODULE)/internal/buildinfo.commit=$(COMMIT) \
              -X $(MODULE)/internal/buildinfo.date=$(BUILD_DATE)

IMAGE      ?= localhost/orchestrator:$(VERSION)
FUZZTIME   ?= 10s

# Pinned tools (versions in hack/tools/install.sh), installed into .tools/bin
# by `make tools`.
export TOOLS := $(CURDIR)/.tools
TOOLBIN      := $(TOOLS)/bin
export PATH  := $(TOOLBIN):$(PATH)
export SKAFFOLD_UPDATE_CHECK := false

# Debian packages the image build, the benchmarks, the linters, the local
# Kubernetes node (hack/localkube/versions.env) and the cross-language agent
# tests (Flask and requests, and httpx for the async /api/v1 clients, as
# OptiInfra's Python agents use) need.
APT_PACKAGES := buildah podman runc busybox-static ca-certificates curl wrk shellcheck \
                etcd-server containerd containernetworking-plugins iptables iproute2 util-linux openssl \
                python3-flask python3-requests python3-httpx postgresql

# The PostgreSQL image (hack/postgres): its root filesystem, and psql for
# its check.
APT_PACKAGES += mmdebstrap postgresql-client

# Shell scripts, for shellcheck.
SCRIPTS := $(wildcard hack/*.sh hack/*/*.sh) .ci/run

# Every fuzz target, as package:Function.
FUZZ_TARGETS := ./internal/config:FuzzLoad ./internal/api:FuzzRequestID ./internal/api:FuzzRegister ./internal/api:FuzzHeartbeat ./internal/api:FuzzSubmitTask ./internal/api:FuzzRegisterV1 ./internal/api:FuzzHeartbeatV1 ./internal/coordination:FuzzCoordinateRequest ./internal/api:FuzzCoordinate

.PHONY: help
help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  %-14s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: build
build: ## Build bin/orchestrator with version, commit and date stamped in
	CGO_ENABLED=0 go build -ldflags "$(LDFLAGS)" -o bin/orchestrator ./cmd/orchestrator

.PHONY: run
run: build ## Run the service on :8080 (settings from the environment and ./.env)
	./bin/orchestrator

.PHONY: test
test: deps lint test-go test-crosslang fuzz test-chart image-test postgres-image-test e2e-local ## The whole suite: lint, Go tests, fuzzing, chart, images, e2e

# test/cluster runs replicas of the real binary over a PostgreSQL it starts
# from Debian's postgresql package (in APT_PACKAGES).
.PHONY: test-go
test-go: ## Unit, handler and process-level tests with the race detector
	go test -race -count=1 ./...

.PHONY: test-crosslang
test-crosslang: ## Python agents (Flask; async httpx for /api/v1) against the real binary: register, heartbeat, tasks, unregister
	go test -race -tags crosslang -count=1 ./test/crosslang/

.PHONY: fuzz
fuzz: ## Run every fuzz target for FUZZTIME (default 10s) each
	@for t in $(FUZZ_TARGETS); do \
	  echo "fuzz $${t#*:} in $${t%%:*} for $(FUZZTIME)"; \
	  go test -run '^$$' -fuzz "^$${t#*:}\$$" -fuzztime $(FUZZTIME) "$${t%%:*}"; \
	done

.PHONY: test-chart
test-chart: tools ## Chart, manifests, schemas, Skaffold: everything short of a cluster
	helm-unittest charts/orchestrator
	hack/chart-check.sh
	go test -tags chart -count=1 ./test/chart/
	hack/tools/selftest.sh
	hack/skaffold-check.sh

.PHONY: e2e
e2e: ## The e2e suite against the current kube-context; E2E_IMAGE: an image the cluster can run
	go test -tags e2e -count=1 -timeout 40m -v ./test/e2e/

.PHONY: e2e-local
e2e-local: tools ## Bring up a real Kubernetes node here (offline), run the e2e suite on it, tear it down
	hack/e2e-local.sh

.PHONY: manifests
manifests: tools ## Render k8s/ from the chart's defaults
	hack/manifests.sh write

.PHONY: bench
bench: ## Benchmarks against references in the same run: probes, heartbeats, dispatch overhead, routing with 10k agents, PostgreSQL mode (its own server)
	go test -run '^$$' -bench . -benchmem ./internal/...
	go run ./hack/bench

.PHONY: lint
lint: tools ## go vet, golangci-lint, shellcheck, actionlint
	go vet -tags e2e,chart,crosslang ./...
	golangci-lint run --config hack/golangci.yml ./...
	shellcheck -x -P SCRIPTDIR $(SCRIPTS)
	actionlint

.PHONY: fmt
fmt: tools ## Format the code (gofmt, goimports)
	golangci-lint fmt --config hack/golangci.yml ./...

.PHONY: deps
deps: system-deps tools ## Download modules, install pinned tools and Debian packages
	go mod download

.PHONY: tools
tools: ## Install the pinned tools into .tools/bin (seconds when already there)
	hack/tools/install.sh

.PHONY: system-deps
system-deps: ## Install the Debian packages the image build and linters need (as root)
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

.PHONY: image
image: ## Build the container image with buildah (no Docker engine needed)
	IMAGE=$(IMAGE) VERSION=$(VERSION) COMMIT=$(COMMIT) BUILD_DATE=$(BUILD_DATE) hack/image/build.sh

.PHONY: image-run
image-run: ## Run the image with podman on 127.0.0.1:8080
	source hack/image/env.sh && podman run --rm -it -p 127.0.0.1:8080:8080 --read-only --cap-drop ALL $(IMAGE)

.PHONY: image-test
image-test: ## Build the image, run it as non-root and check it answers /ready
	IMAGE=$(IMAGE) VERSION=$(VERSION) COMMIT=$(COMMIT) BUILD_DATE=$(BUILD_DATE) hack/image/test.sh

.PHONY: postgres-image
postgres-image: ## Build the PostgreSQL image for the chart's bundled database from Debian's packages (buildah, no pull)
	hack/postgres/build.sh

.PHONY: postgres-image-test
postgres-image-test: ## Build the PostgreSQL image and check the official image's contract with podman and psql
	hack/postgres/test.sh

.PHONY: postgres-image-load
postgres-image-load: ## Build the PostgreSQL image and push it into the running local node's registry (hack/localkube)
	hack/postgres/load.sh

.PHONY: clean
clean: ## Remove build output (keeps .tools and the image store)
	rm -rf bin dist
	go clean -testcache
