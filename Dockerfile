# syntax=docker/dockerfile:1
# The `ledger` binary in a small image that runs as a non-root user.
#
#   docker build -t booking-ledger .
#   docker run --rm -e DATABASE_URL=... -e NATS_URL=... -e JWT_SECRET=... \
#     -p 8080:8080 -p 9090:9090 booking-ledger
#
# Stage 1 compiles the workspace in release mode; stage 2 holds only the
# binary, CA certificates (TLS to NATS, JWKS and iCal feeds) and curl for the
# health check. The migrations are embedded in the binary (`ledger migrate`).

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts keep the registry and the build directory between builds
# (BuildKit), so a source change recompiles only the workspace crates.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p ledger-api --bin ledger \
    && cp target/release/ledger /usr/local/bin/ledger

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 ledger \
    && useradd --system --uid 10001 --gid ledger --no-create-home --shell /usr/sbin/nologin ledger
COPY --from=build /usr/local/bin/ledger /usr/local/bin/ledger
USER 10001:10001
# Inside a container the service listens on every interface.
ENV LEDGER_LISTEN=0.0.0.0:8080 \
    LEDGER_METRICS_LISTEN=0.0.0.0:9090 \
    LEDGER_LOG_FORMAT=json \
    RUST_LOG=info
EXPOSE 8080 9090
HEALTHCHECK --interval=10s --timeout=2s --start-period=30s --retries=3 \
    CMD curl --fail --silent --max-time 2 http://127.0.0.1:8080/healthz || exit 1
ENTRYPOINT ["/usr/local/bin/ledger"]
CMD ["serve"]
