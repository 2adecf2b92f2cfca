# syntax=docker/dockerfile:1
# The one modbot image: every component (config-node, gateway, proxy,
# replicate, restore) is a subcommand of /usr/local/bin/modbot; modbotctl is
# beside it for operators (kubectl exec … -- modbotctl status).
# go-sqlite3 needs cgo, so the runtime base has glibc; it has no shell.
# docs/deploy.md says how to build and push it; deploy/dockerfile_test.go lints it.

# GO_VERSION of the build stage: go.mod's go line.
ARG GO_VERSION=1.26.8

FROM golang:${GO_VERSION}-bookworm AS build
# golang:*-bookworm ships gcc and libc6-dev, all that cgo needs here.
WORKDIR /src
ENV CGO_ENABLED=1 GOFLAGS=-trimpath
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    go build -ldflags='-s -w' -o /out/ ./cmd/modbot ./cmd/modbotctl

FROM gcr.io/distroless/base-debian12:nonroot AS runtime
LABEL org.opencontainers.image.title="modbot" \
      org.opencontainers.image.description="modbot: config nodes, gateway pods, proxies and the Litestream sidecar in one binary" \
      io.modbot.image.name="ghcr.io/modbot/modbot"
COPY --from=build /out/modbot /out/modbotctl /usr/local/bin/
# distroless's nonroot user; the manifests run as the same uid and gid.
USER 65532:65532
WORKDIR /data
EXPOSE 7000 8000 8080 9000 9095
ENTRYPOINT ["/usr/local/bin/modbot"]
CMD ["--help"]
