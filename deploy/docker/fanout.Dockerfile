# herald-fanout image. Build from the repository root:
#   docker build -f deploy/docker/fanout.Dockerfile -t herald/fanout .
FROM rust:1.88-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p herald-fanout \
    && cp target/release/herald-fanout /herald-fanout

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /herald-fanout /usr/local/bin/herald-fanout
ENV HERALD_ADMIN_LISTEN=0.0.0.0:9200
EXPOSE 9200
USER nonroot
ENTRYPOINT ["/usr/local/bin/herald-fanout"]
