# One image for the whole suite: the three services and the `trias` CLI.
#   docker build -t trias .
# docker-compose.yml builds and runs it against PostgreSQL (see README.md, "Containers").

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# protox compiles the protos in Rust (no protoc); SQLite is built from source by sqlx.
RUN cargo build --release --locked \
        -p trias-issuer -p trias-validator -p trias-auditor -p trias-cli --bins

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /data trias \
    && mkdir -p /data /pki /etc/trias \
    && chown trias:trias /data /pki
COPY --from=build /src/target/release/trias-issuer /src/target/release/trias-validator \
     /src/target/release/trias-auditor /src/target/release/trias /usr/local/bin/
COPY policy/sample-policy.toml /etc/trias/policy.toml
COPY deploy/issuer.toml deploy/validator.toml deploy/auditor.toml /etc/trias/
USER trias
WORKDIR /data
