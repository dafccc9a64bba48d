# jetlock binary image (used by docker-compose.yml, built once as
# jetlock:local and shared by its services).
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY crates crates
COPY nats nats
RUN cargo build --release --locked -p jetlock-cli --bin jetlock

FROM debian:bookworm-slim
# ca-certificates: tls:// URLs to NATS verify the server against the
# system's roots. curl: the compose healthcheck asks `/readyz`.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/*
RUN useradd --system --uid 10001 jetlock
COPY --from=build /src/target/release/jetlock /usr/local/bin/jetlock
USER jetlock
# The coordinator's /metrics, /healthz and /readyz (`serve --metrics-addr`).
EXPOSE 9464
ENTRYPOINT ["jetlock"]
