# syntax=docker/dockerfile:1
# Multi-stage build: compile in the Rust image, run as a non-root user in a slim Debian image
# that carries the PostgreSQL binaries for the embedded default database.

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, for layer caching.
COPY Cargo.toml Cargo.lock ./
COPY crates ./crates
COPY vendor ./vendor
RUN mkdir -p src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --bin ironfhir || true
COPY . .
RUN touch src/main.rs src/lib.rs && cargo build --release --bin ironfhir

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql ca-certificates tzdata \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --create-home --home-dir /var/lib/ironfhir --shell /usr/sbin/nologin ironfhir
COPY --from=build /src/target/release/ironfhir /usr/local/bin/ironfhir
USER ironfhir
WORKDIR /var/lib/ironfhir
ENV IRONFHIR_DATA_DIR=/var/lib/ironfhir/data \
    IRONFHIR_LISTEN=0.0.0.0:8080
VOLUME ["/var/lib/ironfhir/data"]
EXPOSE 8080
ENTRYPOINT ["ironfhir"]
CMD ["serve"]
