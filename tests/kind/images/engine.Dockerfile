# syntax=docker/dockerfile:1
# The stand-in inference engine of the kind suite (aver-stub-engine: an
# OpenAI-shaped echo server on 127.0.0.1:8000 inside the pod). Static musl
# binary, empty image, non-root. Build from the repository root:
#   docker build -f tests/kind/images/engine.Dockerfile -t aver-stub-engine:e2e .
FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
RUN cargo build --release --locked --target x86_64-unknown-linux-musl \
      -p aver-tests --bin aver-stub-engine \
 && cp target/x86_64-unknown-linux-musl/release/aver-stub-engine /aver-stub-engine

FROM scratch
COPY --from=build /aver-stub-engine /aver-stub-engine
USER 65532:65532
ENTRYPOINT ["/aver-stub-engine", "127.0.0.1:8000"]
