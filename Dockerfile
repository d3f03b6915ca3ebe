# syntax=docker/dockerfile:1
#
# The bridge as a small, non-root image:
#
#   docker build --build-arg VERSION=$(git describe --tags --always --dirty) -t depbridge:dev .
#
# Multi-platform with buildx (the Go build cross-compiles; no emulation):
#
#   docker buildx build --platform linux/amd64,linux/arm64 -t REGISTRY/depbridge:TAG --push .

FROM --platform=$BUILDPLATFORM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
ARG VERSION=dev
ARG TARGETOS TARGETARCH
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH \
    go build -trimpath -ldflags "-s -w -X github.com/depbridge/depbridge/internal/version.Version=$VERSION" \
      -o /out/ ./cmd/bridge ./hack/healthcheck

# Static binary on distroless: CA certificates and /etc/passwd, no shell.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/bridge /out/healthcheck /usr/local/bin/
# nonroot: 65532:65532.
USER 65532:65532
# /healthz, /readyz and /metrics (the configuration's listen address).
# Kubernetes probes them with httpGet; container engines can run
# `healthcheck http://127.0.0.1:8080/healthz` (no shell or wget here).
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/bridge"]
CMD ["run", "--config", "/etc/depbridge/config.yaml"]
