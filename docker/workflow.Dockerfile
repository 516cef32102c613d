# syntax=docker/dockerfile:1
# Image of the workflow service: package cim-workflow, binary cim-workflow.
# The service Dockerfiles differ only in names, ports and the healthcheck list; a new service
# starts as a copy of graph.Dockerfile. Build from the repository root:
#   docker build -f docker/workflow.Dockerfile -t cim-workflow .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts keep crates and incremental artifacts between builds; the binary is copied out
# because the target cache is not part of the image. --locked: Cargo.lock decides versions.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p cim-workflow --bin cim-workflow \
 && install -D -m 0755 target/release/cim-workflow /out/cim-workflow

FROM debian:bookworm-slim
# ca-certificates for TLS to NATS/Redis/OTLP; curl for the healthcheck. Not version-pinned:
# Debian security updates replace the old versions, the base image pins the release.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 cim \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin cim
COPY --from=build /out/cim-workflow /usr/local/bin/cim-workflow
COPY docker/healthcheck.sh /usr/local/bin/cim-healthcheck
LABEL org.opencontainers.image.title="cim-workflow" org.opencontainers.image.licenses="Apache-2.0"
# Numeric user so Kubernetes can verify runAsNonRoot.
USER 10001:10001
EXPOSE 50053 9104
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["/usr/local/bin/cim-healthcheck", "workflow:9104"]
ENTRYPOINT ["/usr/local/bin/cim-workflow"]
