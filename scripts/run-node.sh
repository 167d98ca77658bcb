#!/usr/bin/env bash
# A real Kubernetes node on this machine, in one command (as root): kubelet + containerd +
# runc, the control plane, the agent image built without Docker and installed with
# `helm install` of charts/tpfilter, exactly as tests/e2e runs it on a real node. Prints the
# kubeconfig to use; Ctrl-C stops it and removes what it made, the agent's pins and state
# included (which a `helm uninstall` leaves on a node: README, "Install into a cluster").
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh >/dev/null
bash scripts/build-k8s-bins.sh | tail -n 1
bash scripts/build-images.sh >/dev/null
export PATH="${TPFILTER_CACHE:-/var/cache/tpfilter}/bin:$PATH"
exec .venv/bin/python -m tpfilter_dev.realcluster "$@"
