#!/usr/bin/env bash
# The one command that installs everything and runs every test (as root, on a fresh machine):
#   bash scripts/test.sh            # everything
#   bash scripts/test.sh -m unit    # extra arguments go to pytest
# It installs the apt/pip packages (scripts/install.sh), builds or reuses the control-plane
# binaries (scripts/build-k8s-bins.sh) and the images of the real node (scripts/build-images.sh),
# runs ruff and mypy, then pytest: unit tests, real-kernel tests (BPF maps, cgroups),
# integration tests against a real kube-apiserver + etcd, and the real-node e2e suite
# (helm install of the chart on a kubelet + containerd node).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
bash scripts/build-k8s-bins.sh
bash scripts/build-images.sh >/dev/null   # the real node's images (cached; prints paths)
export PATH="${TPFILTER_CACHE:-/var/cache/tpfilter}/bin:$PATH"
echo "== ruff";  .venv/bin/ruff check .
echo "== mypy";  .venv/bin/mypy
echo "== pytest"
exec .venv/bin/pytest "$@"
