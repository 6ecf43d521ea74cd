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
# Base images are pinned by tag. For reproducible builds, pin digests too
# (`FROM rust:1.95-bookworm@sha256:...`) and let your dependency bot update them.

FROM rust:1.95-bookworm AS builder
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
# Cache mounts keep the registry and the build directory between builds (BuildKit); the
# binary is copied out of the cached target directory into the image layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
    && install -D -m 0755 target/release/agent-authz /out/agent-authz

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
