# syntax=docker/dockerfile:1
# One image for every role: `nsready serve | collector | worker | migrate | status | dlq …`.
# Build:  docker build -t nsready:0.1.0 .
# Run:    docker run --rm -p 8001:8001 -e SERVICE_HOST=0.0.0.0 -e INGEST_AUTH=token nsready:0.1.0 serve
# (embedded mode keeps its files in /var/lib/nsready: mount a volume there).

# --- build: the locked dependency graph of Cargo.lock, release profile.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Dependencies first, so a source change does not rebuild them: a stub crate with the
# real manifest and lock file.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src
COPY src ./src
# touch: the stub's build outputs are newer than the copied sources otherwise.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin nsready \
    && install -D -m 0755 target/release/nsready /out/nsready

# --- runtime: Debian slim, curl only for the HEALTHCHECK, an unprivileged user.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates=20230311* curl=7.88.* \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 nsready \
    && useradd --system --uid 10001 --gid nsready --home-dir /var/lib/nsready \
       --shell /usr/sbin/nologin nsready \
    && install -d -o nsready -g nsready -m 0700 /var/lib/nsready
COPY --from=build /out/nsready /usr/bin/nsready
USER 10001:10001
WORKDIR /var/lib/nsready
# In a container the listener must take connections from outside the container's
# loopback; protected mode then requires INGEST_AUTH (token or shared) to be set too.
ENV SERVICE_HOST=0.0.0.0 \
    SERVICE_PORT=8001 \
    DATA_DIR=/var/lib/nsready \
    LOG_FORMAT=json
VOLUME ["/var/lib/nsready"]
EXPOSE 8001
# /v1/ready: 200 while the process takes traffic, 503 while it starts, drains or its
# queue is unreachable (curl exits non-zero: unhealthy). Plain HTTP on loopback port 8001;
# with another SERVICE_PORT, or TLS_CERT_FILE set (then
# `curl -fsSk https://…`), override it (`--health-cmd`, compose `healthcheck`).
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["curl", "-fsS", "--max-time", "2", "http://127.0.0.1:8001/v1/ready"]
# SIGTERM drains within SHUTDOWN_TIMEOUT (30 s); give `docker stop -t` at least that.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/nsready"]
CMD ["serve"]
