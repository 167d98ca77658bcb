# The tpfilter agent image (charts/tpfilter deploys it as a DaemonSet). Build it from a
# context of only the files used (as scripts/e2e-kind.sh does; the repository has no
# .dockerignore, and `docker build .` would send .venv and the caches):
#   tar -c Dockerfile pyproject.toml README.md operator/tpfilter bpf scripts/agent-entrypoint.sh |
#     docker build -t tpfilter:dev -
#   docker run --rm tpfilter:dev probe       # any `tpfilter` subcommand; the default: agent
#
# Debian bookworm because bcc's Python bindings are Debian's python3-bpfcc (PyPI's "bcc" is
# an unrelated package), built for bookworm's /usr/bin/python3 (3.11); the project lives in
# a venv made with --system-site-packages so that it sees them, as scripts/install.sh does.
FROM debian:bookworm-slim

ARG DEBIAN_FRONTEND=noninteractive

# - python3-bpfcc, libbpfcc: bcc (libbcc.so.0 is what the agent's map code calls; the
#   Python bindings are for BPF programs compiled at run time). libbcc embeds LLVM/clang,
#   so no clang package is needed to compile BPF C with bcc.
# - linux-headers-<arch>: bcc's run-time compiler needs kernel headers. These (bookworm's
#   6.1) are only the last resort: on nodes that ship headers for their running kernel
#   (/lib/modules/$(uname -r)/build, mounted from the host by the chart) or kheaders
#   (/sys/kernel/kheaders.tar.xz, CONFIG_IKHEADERS) those are used instead.
#   scripts/agent-entrypoint.sh links Debian's headers into /lib/modules/$(uname -r) only
#   when the node has none.
# - xz-utils: bcc unpacks kheaders.tar.xz with tar.
# - bpftool: diagnostics from `kubectl exec` (bpftool map show, prog show, cgroup tree).
# - python3-venv: the venv below.
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        ca-certificates \
        python3 \
        python3-venv \
        python3-bpfcc \
        libbpfcc \
        bpftool \
        xz-utils \
        "linux-headers-$(dpkg --print-architecture)" \
    && rm -rf /var/lib/apt/lists/*

ENV VIRTUAL_ENV=/opt/tpfilter \
    PATH=/opt/tpfilter/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Only what the package needs (not operator/tpfilter_dev, the test-only control plane), so
# that edits elsewhere in the repository do not invalidate this layer. bpf/ is there for
# operator/tpfilter/bpf (a symlink to it): the wheel ships policy_filter.h as package data,
# where tpfilter.bpfsrc finds it; the check below fails the build if it does not.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bpf ./bpf
COPY operator/tpfilter ./operator/tpfilter
RUN /usr/bin/python3 -m venv --system-site-packages "$VIRTUAL_ENV" \
    && "$VIRTUAL_ENV/bin/pip" install . \
    && cd / && rm -rf /src \
    && "$VIRTUAL_ENV/bin/python" -c "import bcc, kopf, kubernetes, pydantic, tpfilter.runner; \
from tpfilter.bpfsrc import include_dir; print('policy_filter.h in', include_dir())"
WORKDIR /

COPY scripts/agent-entrypoint.sh /usr/local/bin/agent-entrypoint.sh
RUN chmod 0755 /usr/local/bin/agent-entrypoint.sh

# Root, and privileged in the pod: bpf(2), bpffs mounts and the host's cgroupfs (see the
# chart's DaemonSet for why).
ENTRYPOINT ["/usr/local/bin/agent-entrypoint.sh", "tpfilter"]
CMD ["agent"]
