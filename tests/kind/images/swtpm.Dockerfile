# syntax=docker/dockerfile:1
# swtpm for the chart's test-only DaemonSet (swtpm.enabled): one software
# TPM per TPM node, listening on the node's address. Test clusters only: it
# proves nothing about hardware. It runs as root because its state is a
# hostPath of the node that the kubelet creates root-owned.
#   docker build -f tests/kind/images/swtpm.Dockerfile -t aver-swtpm:e2e tests/kind/images
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends swtpm \
 && rm -rf /var/lib/apt/lists/*
ENTRYPOINT ["swtpm"]
