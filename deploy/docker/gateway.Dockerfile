# herald-gateway image. Build from the repository root:
#   docker build -f deploy/docker/gateway.Dockerfile -t herald/gateway .
FROM rust:1.88-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p herald-gateway \
    && cp target/release/herald-gateway /herald-gateway

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /herald-gateway /usr/local/bin/herald-gateway
ENV HERALD_LISTEN=0.0.0.0:8080 \
    HERALD_ADMIN_LISTEN=0.0.0.0:9100
EXPOSE 8080 9100
USER nonroot
ENTRYPOINT ["/usr/local/bin/herald-gateway"]
