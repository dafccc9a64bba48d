# jetlock binary image (used by docker-compose.yml).
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY crates crates
COPY nats nats
RUN cargo build --release --locked -p jetlock-cli --bin jetlock

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 jetlock
COPY --from=build /src/target/release/jetlock /usr/local/bin/jetlock
USER jetlock
ENTRYPOINT ["jetlock"]
