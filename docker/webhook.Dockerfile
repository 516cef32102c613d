# syntax=docker/dockerfile:1
# Image of the webhook service: package cim-webhook, binary cim-webhook.
# The service Dockerfiles differ only in names, ports and the healthcheck list; a new service
# starts as a copy of graph.Dockerfile. Build from the repository root:
#   docker build -f docker/webhook.Dockerfile -t cim-webhook .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts keep crates and incremental artifacts between builds; the binary is copied out
# because the target cache is not part of the image. --locked: Cargo.lock decides versions.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p cim-webhook --bin cim-webhook \
 && install -D -m 0755 target/release/cim-webhook /out/cim-webhook

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
COPY --from=build /out/cim-webhook /usr/local/bin/cim-webhook
COPY docker/healthcheck.sh /usr/local/bin/cim-healthcheck
LABEL org.opencontainers.image.title="cim-webhook" org.opencontainers.image.licenses="Apache-2.0"
# Numeric user so Kubernetes can verify runAsNonRoot.
USER 10001:10001
EXPOSE 50055 9106
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["/usr/local/bin/cim-healthcheck", "webhook:9106"]
ENTRYPOINT ["/usr/local/bin/cim-webhook"]
