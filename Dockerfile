# The tpfilter agent image (charts/tpfilter deploys it as a DaemonSet). Build it from a
# context of only the files used (as scripts/e2e-kind.sh does; the repository has no
# .dockerignore, and `docker build .` would send .venv and the caches):
#   tar -c Dockerfile pyproject.toml README.md image operator/tpfilter bpf scripts/agent-entrypoint.sh |
#     docker build -t tpfilter:dev -
#   docker run --rm tpfilter:dev probe       # any `tpfilter` subcommand; the default: agent
#
# Debian bookworm because bcc's Python bindings are Debian's python3-bpfcc (PyPI's "bcc" is
# an unrelated package), built for bookworm's /usr/bin/python3 (3.11); the project lives in
# a venv made with --system-site-packages so that it sees them, as scripts/install.sh does.
FROM debian:bookworm-slim

ARG DEBIAN_FRONTEND=noninteractive

# What goes into the image is image/agent-packages.txt (Debian packages, each explained in
# image/README.md) and image/install-agent.sh (the venv and the project): the same two
# files scripts/build-images.sh uses to build this image without Docker (debootstrap and a
# chroot) for the real-node e2e suite, so both describe one image.
COPY image/agent-packages.txt image/install-agent.sh /src/image/
RUN sh /src/image/install-agent.sh packages

ENV VIRTUAL_ENV=/opt/tpfilter \
    PATH=/opt/tpfilter/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Only what the package needs (not operator/tpfilter_dev, the test-only control plane), so
# that edits elsewhere in the repository do not invalidate these layers. bpf/ is there for
# operator/tpfilter/bpf (a link to it): the wheel ships the BPF sources as package data,
# where the agent finds them; install-agent.sh fails the build if it does not.
WORKDIR /src
COPY pyproject.toml README.md ./
RUN sh /src/image/install-agent.sh deps /src
COPY bpf ./bpf
COPY operator/tpfilter ./operator/tpfilter
RUN sh /src/image/install-agent.sh project /src && cd / && rm -rf /src
WORKDIR /

COPY scripts/agent-entrypoint.sh /usr/local/bin/agent-entrypoint.sh
RUN chmod 0755 /usr/local/bin/agent-entrypoint.sh

# Root, and privileged in the pod: bpf(2), bpffs mounts and the host's cgroupfs (see the
# chart's DaemonSet for why).
ENTRYPOINT ["/usr/local/bin/agent-entrypoint.sh", "tpfilter"]
CMD ["agent"]
