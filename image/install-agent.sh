#!/bin/sh
# The agent image's install steps, run inside the image's root as root: by the Dockerfile
# (RUN) and by scripts/build-images.sh (in a chroot of a debootstrap root), so that both
# describe the same image.
#   install-agent.sh packages          apt packages of image/agent-packages.txt
#   install-agent.sh deps SRC          the venv /opt/tpfilter and the project's dependencies
#   install-agent.sh project SRC       the project itself (no dependencies), then a check
# SRC holds pyproject.toml, README.md, bpf/ and operator/tpfilter.
set -eu
VENV=/opt/tpfilter
HERE=$(dirname "$0")
case "$1" in
  packages)
    arch=$(dpkg --print-architecture)
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    grep -v '^#' "$HERE/agent-packages.txt" | sed "s/@ARCH@/$arch/" |
      xargs apt-get install -y --no-install-recommends
    rm -rf /var/lib/apt/lists/*
    ;;
  deps)
    # --system-site-packages: bcc's bindings are Debian's python3-bpfcc (PyPI's "bcc" is
    # an unrelated package).
    /usr/bin/python3 -m venv --system-site-packages "$VENV"
    /usr/bin/python3 -c 'import sys, tomllib; print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]))' \
      "$2/pyproject.toml" > /tmp/agent-requirements.txt
    "$VENV/bin/pip" install --no-cache-dir --disable-pip-version-check -r /tmp/agent-requirements.txt
    rm -f /tmp/agent-requirements.txt
    ;;
  project)
    "$VENV/bin/pip" install --no-cache-dir --disable-pip-version-check --no-deps --no-compile "$2"
    # The BPF C the agent compiles at start must be in the installed package.
    "$VENV/bin/python" -c "import bcc, kopf, kubernetes, pydantic, tpfilter.runner; \
from tpfilter.programs.build import program_source; assert program_source().is_file(), program_source(); \
print('BPF sources in', program_source().parent.parent)"
    ;;
  *)
    echo "usage: install-agent.sh packages | deps SRC | project SRC" >&2
    exit 2
    ;;
esac
