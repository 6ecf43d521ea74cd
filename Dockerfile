# agent-authz container image: a release build, run as a non-root user on a distroless base
# (glibc, CA certificates, no shell, no package manager).
#
#   docker build -t agent-authz:0.1.0 .
#   docker run --rm -p 9191:9191 -p 9192:9192 \
#     -v "$PWD/agent-authz.yaml:/etc/agent-authz/agent-authz.yaml:ro" agent-authz:0.1.0
#
# The configuration is read from /etc/agent-authz/agent-authz.yaml; in a container its
# listen addresses must be 0.0.0.0:... for anything outside the container (or pod) to reach them.
#
# Base images are pinned by tag here: this repository is built and tested without a registry,
# so no digest in it could be checked. Pin digests where you build the image (a tag can be
# moved, a digest cannot):
#   docker buildx imagetools inspect rust:1.95-bookworm          # "Digest: sha256:..."
#   docker buildx imagetools inspect gcr.io/distroless/cc-debian12:nonroot
# then write `FROM rust:1.95-bookworm@sha256:<digest> AS builder` and
# `FROM gcr.io/distroless/cc-debian12:nonroot@sha256:<digest>` (the index digest, which covers
# every platform), and let your dependency bot (Renovate, Dependabot) update them.

FROM rust:1.95-bookworm AS builder
# Set by BuildKit per platform (docker buildx build --platform linux/amd64,linux/arm64).
ARG TARGETPLATFORM
# protoc, for the build scripts of the Envoy and Cerbos API crates. The Debian release (pinned by
# the image tag) fixes its version (3.21); pinning the Debian revision would break the build
# at the next security update of the package.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends protobuf-compiler \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# Cache mounts keep the registry and the build directory between builds (BuildKit). The
# build directory holds one platform's objects: its cache is per platform, so a multi-platform
# build never links one platform's objects into another's binary; the registry (sources only)
# is shared, one build at a time. The binary is stripped (`install -s`: no symbol tables in
# the image) on its way out of the cached target directory into the image layer.
RUN --mount=type=cache,id=cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=agent-authz-target-${TARGETPLATFORM},target=/src/target,sharing=locked \
    cargo build --release --locked \
    && install -D -s -m 0755 target/release/agent-authz /out/agent-authz

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/agent-authz /usr/local/bin/agent-authz
# The image's `nonroot` user, by number: Kubernetes can verify runAsNonRoot only for a numeric
# user (and hadolint DL3066 asks for one).
USER 65532:65532
# 9191: ext_authz + ext_proc + grpc.health.v1 (gRPC); 9192: /healthz, /readyz, /metrics.
EXPOSE 9191 9192
# No HEALTHCHECK: the image has no shell or HTTP client to run one, and the binary has no
# self-check command. Orchestrators probe the service directly instead: Kubernetes with
# httpGet /readyz and /healthz on 9192 or a gRPC probe on 9191 (k8s/, istio/), Envoy with a
# gRPC health check, anything else with GET http://<container>:9192/readyz from outside.
ENTRYPOINT ["/usr/local/bin/agent-authz"]
CMD ["serve", "--config", "/etc/agent-authz/agent-authz.yaml"]
