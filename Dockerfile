# The orchestrator's container image: a static Go binary on an empty base,
# running as a non-root user.
#
#   docker build --build-arg VERSION=1.2.3 --build-arg COMMIT=$(git rev-parse --short HEAD) \
#     --build-arg BUILD_DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ) -t orchestrator .
#
# Without Docker, hack/image/build.sh builds it with buildah and a locally
# assembled Go image passed as GO_IMAGE (nothing is pulled).

ARG GO_IMAGE=docker.io/library/golang:1.26-bookworm

FROM ${GO_IMAGE} AS build
# The few files the empty final image needs: a non-root user, a writable
# /tmp and CA certificates for outgoing TLS.
RUN mkdir -p /out/rootfs/etc/ssl/certs /out/rootfs/tmp && \
    chmod 1777 /out/rootfs/tmp && \
    printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' \
      'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' >/out/rootfs/etc/passwd && \
    printf '%s\n' 'root:x:0:' 'nonroot:x:65532:' >/out/rootfs/etc/group && \
    cp /etc/ssl/certs/ca-certificates.crt /out/rootfs/etc/ssl/certs/

WORKDIR /src
# Modules first, so this layer stays cached until go.mod or go.sum change.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# skaffold debug sets SKAFFOLD_GO_GCFLAGS (e.g. "all=-N -l"); the binary then
# keeps its symbol table and DWARF (no -s -w) for delve. No -trimpath either:
# skaffold maps the /src paths in the binary back to the sources.
ARG SKAFFOLD_GO_GCFLAGS=""
ARG VERSION=dev
ARG COMMIT=unknown
ARG BUILD_DATE=unknown
RUN pkg=github.com/optiinfra/orchestrator/internal/buildinfo; \
    ldflags="-X ${pkg}.version=${VERSION} -X ${pkg}.commit=${COMMIT} -X ${pkg}.date=${BUILD_DATE}"; \
    if [ -z "${SKAFFOLD_GO_GCFLAGS}" ]; then ldflags="-s -w ${ldflags}"; fi; \
    CGO_ENABLED=0 go build -gcflags="${SKAFFOLD_GO_GCFLAGS}" -ldflags="${ldflags}" \
      -o /out/orchestrator ./cmd/orchestrator

FROM scratch
ARG VERSION=dev
ARG COMMIT=unknown
ARG BUILD_DATE=unknown
LABEL org.opencontainers.image.title="orchestrator" \
      org.opencontainers.image.description="OptiInfra Orchestrator: the control-plane service that agents register with and that routes tasks to them" \
      org.opencontainers.image.source="https://github.com/optiinfra/orchestrator" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${COMMIT}" \
      org.opencontainers.image.created="${BUILD_DATE}"
COPY --from=build /out/rootfs/ /
COPY --from=build /out/orchestrator /orchestrator
USER 65532:65532
EXPOSE 8080
# skaffold debug recognises Go images by GOTRACEBACK.
ENV GOTRACEBACK=single
# The image has no shell: the binary probes itself: GET /ready at HTTP_HOST
# (its loopback when unset) and PORT, from the environment and ./.env only.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 CMD ["/orchestrator", "probe"]
ENTRYPOINT ["/orchestrator"]
