# syntax=docker/dockerfile:1
# Image of the monolith (cim serve runs every service in one process): package cim, binary cim.
# The service Dockerfiles differ only in names, ports and the healthcheck list; a new service
# starts as a copy of graph.Dockerfile. Build from the repository root:
#   docker build -f docker/cim.Dockerfile -t cim .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts keep crates and incremental artifacts between builds; the binary is copied out
# because the target cache is not part of the image. --locked: Cargo.lock decides versions.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p cim --bin cim \
 && install -D -m 0755 target/release/cim /out/cim

FROM debian:bookworm-slim
# ca-certificates for TLS to NATS/Redis/OTLP; curl for the healthcheck. Not version-pinned:
# Debian security updates replace the old versions, the base image pins the release.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 cim \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin cim \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/cim/objects
COPY --from=build /out/cim /usr/local/bin/cim
COPY docker/healthcheck.sh /usr/local/bin/cim-healthcheck
LABEL org.opencontainers.image.title="cim" org.opencontainers.image.licenses="Apache-2.0"
# Numeric user so Kubernetes can verify runAsNonRoot.
USER 10001:10001
# The document service's content: a local directory unless CIM_OBJECT_STORE_URL names S3/MinIO
# (the default, data/objects, would be under / and not writable by user 10001).
ENV CIM_OBJECT_STORE_URL=/var/lib/cim/objects
VOLUME ["/var/lib/cim/objects"]
EXPOSE 8080 9100 8081 9101 50051 9102 50052 9103 50053 9104 50054 9105 50055 9106
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["/usr/local/bin/cim-healthcheck", "gateway:9100", "websocket:9101", "graph:9102", "document:9103", "workflow:9104", "agent:9105", "webhook:9106"]
ENTRYPOINT ["/usr/local/bin/cim"]
CMD ["serve", "--services", "all"]
