# syntax=docker/dockerfile:1
# aver-enclave: distroless (no shell, no package manager), non-root; the
# controller's pod template gives it a read-only root filesystem.
#
# Not a static binary, unlike the controller: tss-esapi links the TPM2 TSS
# (libtss2-esys, -sys, -mu, -tctildr), and libtss2-tctildr loads the TCTI
# module named by --tcti (libtss2-tcti-device / -swtpm / -mssim) with
# dlopen, which a static binary cannot do. The image carries exactly those
# libraries on glibc (distroless/cc has glibc and libcrypto).
# Build from the repository root:
#   docker build -f tests/kind/images/enclave.Dockerfile -t aver-enclave:e2e .
FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends libtss2-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p aver-enclave --bin aver-enclave \
 && cp target/release/aver-enclave /aver-enclave \
 && mkdir -p /out \
 && for lib in libtss2-esys.so.0 libtss2-sys.so.1 libtss2-mu.so.0 libtss2-tctildr.so.0 \
               libtss2-tcti-device.so.0 libtss2-tcti-swtpm.so.0 libtss2-tcti-mssim.so.0; do \
      cp -L "/usr/lib/x86_64-linux-gnu/$lib" /out/; \
    done

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/ /usr/lib/x86_64-linux-gnu/
COPY --from=build /aver-enclave /aver-enclave
USER 65532:65532
ENTRYPOINT ["/aver-enclave"]
