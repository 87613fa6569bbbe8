# syntax=docker/dockerfile:1
# aver-controller: a static (musl) binary in an otherwise empty image — no
# shell, no package manager — run as a non-root user. The chart runs it with
# a read-only root filesystem. Build from the repository root:
#   docker build -f tests/kind/images/controller.Dockerfile -t aver-controller:e2e .
FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
RUN cargo build --release --locked --target x86_64-unknown-linux-musl \
      -p aver-controller --bin aver-controller \
 && cp target/x86_64-unknown-linux-musl/release/aver-controller /aver-controller

FROM scratch
COPY --from=build /aver-controller /aver-controller
USER 65532:65532
ENTRYPOINT ["/aver-controller"]
