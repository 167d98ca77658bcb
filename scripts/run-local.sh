#!/usr/bin/env bash
# The whole thing on this machine, in one command (as root): builds or reuses the control-plane
# binaries, starts etcd + kube-apiserver, the agent for this machine as a node, applies the seed
# policy, starts a selected and an unselected pod, and shows the maps. Ctrl-C stops and cleans up.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh >/dev/null
bash scripts/build-k8s-bins.sh | tail -n 1
export PATH="${TPFILTER_CACHE:-/var/cache/tpfilter}/bin:$PATH"
exec .venv/bin/python -m tpfilter_dev.demo "$@"
