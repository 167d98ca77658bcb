#!/usr/bin/env bash
# Installs everything tpfilter needs on a fresh Debian 12 machine, as root:
#   - apt: bcc's Python bindings (Debian's python3-bpfcc: PyPI's "bcc" is an unrelated
#     package), clang, bpftool, kernel headers for bcc's run-time compiler;
#   - links /lib/modules/$(uname -r)/{build,source} to Debian's headers when the running
#     kernel ships none (bcc looks there and nowhere else);
#   - mounts bpffs and tracefs if absent;
#   - a venv from /usr/bin/python3 with --system-site-packages (so it sees bcc) holding the
#     project and its dev tools.
# Idempotent: a second run costs seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${TPFILTER_VENV:-.venv}

# util-linux: `unshare`, with which the kubelet stand-in starts container processes.
APT_PACKAGES=(python3-bpfcc bpfcc-tools libbpfcc clang bpftool linux-headers-amd64 python3-venv python3-pip util-linux)
# The real node of tests/e2e (tpfilter_dev.realnode): containerd + runc, CNI plugins,
# what kubelet calls (iptables, conntrack, socat); the images (scripts/build-images.sh):
# debootstrap, busybox-static, a static C toolchain, openssl for the node's certificates.
APT_PACKAGES+=(containerd runc iptables conntrack socat containernetworking-plugins
  debootstrap busybox-static gcc libc6-dev openssl)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install: apt packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# bcc needs headers under /lib/modules/$(uname -r). Link Debian's newest ones when the
# running kernel has none of its own.
kmod=/lib/modules/$(uname -r)
if [ ! -e "$kmod/build/include" ]; then
  hdr=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n1)
  common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n1)
  [ -n "$hdr" ] && [ -n "$common" ] || { echo "install: no kernel headers found in /usr/src" >&2; exit 1; }
  mkdir -p "$kmod"
  ln -sfn "$hdr" "$kmod/build"
  ln -sfn "$common" "$kmod/source"
  echo "install: linked $kmod/build -> $hdr"
fi

mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
mountpoint -q /sys/kernel/tracing || mount -t tracefs none /sys/kernel/tracing 2>/dev/null || true

if [ ! -x "$VENV/bin/python" ]; then
  /usr/bin/python3 -m venv --system-site-packages "$VENV"
fi
"$VENV/bin/pip" install -q --disable-pip-version-check -e '.[dev]'
"$VENV/bin/python" -c "import bcc, kopf, kubernetes, pydantic" 
echo "install: ok ($VENV)"
