# syntax=docker/dockerfile:1
#
# tokengate container image: a small, non-root Debian image with one binary.
#
#   docker build -t tokengate .
#   docker run --rm -p 8080:8080 \
#     -v "$PWD/tokengate.toml:/etc/tokengate/tokengate.toml:ro" tokengate
#
# - The configuration is read from /etc/tokengate/tokengate.toml ($TOKENGATE_CONFIG); mount yours
#   there. Relative paths in it (signing_key = "keys/identity.pem") resolve next to it, so mount
#   keys under /etc/tokengate/keys/. The image ships no configuration of its own.
# - The process runs as uid/gid 65532 ("tokengate"). Files it must read (configuration, keys,
#   certificates) must be readable by that uid or gid.
# - Listeners are whatever the configuration says; the conventional ports are exposed below.
#   Inside a container, listen on 0.0.0.0 (127.0.0.1 is the container's own loopback).
# - Any subcommand works: `docker run --rm tokengate check`, `... tokengate keygen --alg ES256
#   --out /keys/identity.pem`, `... tokengate --help`.
#
# The build command below must stay byte-for-byte the one `.ci/run` runs (tests/packaging.rs
# checks it), so that CI, which has no Docker engine, builds exactly what the image ships.

ARG RUST_VERSION=1.95

# ---------------------------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-bookworm AS build

# josekit links OpenSSL: headers and pkg-config are needed to build.
RUN apt-get update \
 && apt-get install -y --no-install-recommends pkg-config libssl-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
# Only what the build reads: the manifest and lock file, the sources, benches/ (Cargo.toml
# declares a [[bench]] target, and cargo refuses a manifest whose target file is missing) and
# bench/, the workspace's other member (cargo loads every member's manifest and targets; only
# tokengate itself is built).
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY bench ./bench

# BuildKit (Docker's default builder since 23.0; `docker compose` uses it) keeps the registry and
# the target directory in cache mounts between builds, so the binary is copied out of the cached
# target directory in the same step. The release profile keeps DWARF line tables (Cargo.toml:
# debug = "line-tables-only"); the image drops them (about 69 MB -> 15 MB) but keeps the symbol
# table, so a backtrace still names the functions.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --locked --release --bin tokengate \
 && objcopy --strip-debug target/release/tokengate /usr/local/bin/tokengate

# ---------------------------------------------------------------------------------------------
FROM debian:bookworm-slim

# libssl3: OpenSSL at run time (josekit). ca-certificates: the system roots, used for https
# issuers and upstreams unless a ca_file is configured. Nothing else (no curl, no shell tools
# beyond what bookworm-slim already has).
RUN apt-get update \
 && apt-get install -y --no-install-recommends libssl3 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 65532 tokengate \
 && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin tokengate \
 && mkdir -p /etc/tokengate/keys

COPY --from=build /usr/local/bin/tokengate /usr/local/bin/tokengate

ENV TOKENGATE_CONFIG=/etc/tokengate/tokengate.toml \
    HEALTHCHECK_ADMIN_PORT=9901

USER 65532:65532
WORKDIR /etc/tokengate

# 8080: the proxy ([server] listen). 9901: the admin listener ([admin] listen: /healthz, /readyz,
# /jwks.json); publish it only where operators can reach it, never to clients.
EXPOSE 8080 9901

# Liveness through the admin listener's GET /healthz (200 while the process runs). The image has
# no curl and tokengate has no health subcommand (`tokengate check` validates a file, it does not
# ask the running process anything), so the probe is an HTTP/1.1 request written with bash's
# /dev/tcp. It needs an [admin] listener on 127.0.0.1 or 0.0.0.0 inside the container, on
# $HEALTHCHECK_ADMIN_PORT (read only by this probe, never by tokengate; default 9901). Readiness
# (issuer keys loaded) is GET /readyz: orchestrators should probe that separately (see
# docker/compose.yaml and docker/kubernetes/sidecar.yaml).
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${HEALTHCHECK_ADMIN_PORT:-9901} && printf 'GET /healthz HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\nConnection: close\\r\\n\\r\\n' >&3 && IFS= read -r -t 2 status <&3 && [[ $status == 'HTTP/1.1 200 '* ]]"]

# SIGTERM (docker stop, Kubernetes) drains in-flight requests for up to [server] shutdown_grace
# (30 s by default), then exits 0; give the container at least that long (docker stop -t 35,
# terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM
ENTRYPOINT ["tokengate"]
CMD ["serve"]
