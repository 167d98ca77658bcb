#!/usr/bin/env bash
# Builds, without Docker or a registry, the OCI image tars the real-node e2e suite imports
# into containerd (tpfilter_dev.realnode), and caches them under
# ${TPFILTER_CACHE:-/var/cache/tpfilter}/images keyed by the hash of what goes in them:
#
#   pause-<key>.tar    tpfilter.local/pause:dev      the pod sandbox (hack/images/pause.c, gcc -static)
#   busybox-<key>.tar  tpfilter.local/busybox:dev    test pods: Debian's busybox-static and its applets
#   agent-<key>.tar    tpfilter.local/tpfilter:dev   the agent, the same image the Dockerfile describes:
#                      layer 1: a Debian bookworm root from debootstrap, then image/install-agent.sh
#                      `packages` and `deps` in a chroot (cached by the package list, the install
#                      script and pyproject.toml); layer 2: `install-agent.sh project` of this
#                      checkout (an overlay upper directory: only the project's files).
#
# Prints `NAME=PATH` for each image on its last lines. Root; needs debootstrap, gcc, tar.
# Idempotent: a cached image costs seconds. Cold: a few minutes (debootstrap + apt + pip).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${TPFILTER_CACHE:-/var/cache/tpfilter}/images
SUITE=bookworm
PY=${PYTHON:-$ROOT/.venv/bin/python}
mkdir -p "$CACHE"
exec 9>"$CACHE/.build.lock"
flock 9

log() { echo "build-images: $*" >&2; }
hash_of() { cat "$@" | sha256sum | cut -c1-16; }
# prune GLOB KEEP: a new build replaces the old ones of its kind (each is hundreds of MB).
prune() { local f; for f in $CACHE/$1; do [ "$f" = "$2" ] || rm -rf "$f"; done; }
oci() { PYTHONPATH="$ROOT/operator" "$PY" -m tpfilter_dev.ociimage "$@" >/dev/null; }

# The Debian mirror apt uses on this machine (the only one reachable).
mirror() {
  local uri
  uri=$(grep -hsE '^(URIs:|deb )' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list /etc/apt/sources.list 2>/dev/null |
    grep -v security | head -n1 | sed -E 's/^URIs:[[:space:]]*//; s/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?//; s/[[:space:]].*$//')
  echo "${uri:-http://deb.debian.org/debian}"
}

build_pause() {
  local key out tmp
  key=$(hash_of "$ROOT/hack/images/pause.c")
  out=$CACHE/pause-$key.tar
  if [ ! -s "$out" ]; then
    tmp=$(mktemp -d)
    gcc -static -O2 -o "$tmp/pause" "$ROOT/hack/images/pause.c"
    strip "$tmp/pause"
    oci "$out" tpfilter.local/pause:dev "$tmp" --entrypoint /pause
    rm -rf "$tmp"
    prune 'pause-*.tar' "$out"
    log "pause: built $out"
  fi
  echo "PAUSE_IMAGE=$out"
}

build_busybox() {
  local key out tmp applet
  local applets="sh echo ls mkdir / true false sleep cat env id touch"
  key=$( (dpkg-query -W -f='${Version}' busybox-static; echo "$applets v1") | sha256sum | cut -c1-16)
  out=$CACHE/busybox-$key.tar
  if [ ! -s "$out" ]; then
    tmp=$(mktemp -d)
    mkdir -p "$tmp/bin" "$tmp/usr/bin" "$tmp/tmp" "$tmp/etc"
    cp /bin/busybox "$tmp/bin/busybox"
    # Real paths, as in a distribution image: policies name /usr/bin/true, /usr/bin/sleep.
    for applet in sh echo ls mkdir; do ln -s busybox "$tmp/bin/$applet"; done
    for applet in true false sleep cat env id touch; do ln -s ../../bin/busybox "$tmp/usr/bin/$applet"; done
    echo "root:x:0:0:root:/:/bin/sh" > "$tmp/etc/passwd"
    oci "$out" tpfilter.local/busybox:dev "$tmp" --cmd /usr/bin/sleep 3600
    rm -rf "$tmp"
    prune 'busybox-*.tar' "$out"
    log "busybox: built $out"
  fi
  echo "BUSYBOX_IMAGE=$out"
}

chroot_run() { # ROOTFS CMD...: with /dev, /proc, the host's resolver and CA bundle
  local rootfs=$1; shift
  mount --bind /dev "$rootfs/dev"
  mount -t proc proc "$rootfs/proc"
  cp /etc/resolv.conf "$rootfs/etc/resolv.conf"
  # The host's CAs for pip, only while building (a machine may reach PyPI through a proxy
  # whose CA only the host trusts); the image keeps Debian's own bundle.
  cp /etc/ssl/certs/ca-certificates.crt "$rootfs/tmp/build-ca.crt"
  local rc=0
  env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root PYTHONDONTWRITEBYTECODE=1 LANG=C.UTF-8 \
    PIP_CERT=/tmp/build-ca.crt chroot "$rootfs" "$@" || rc=$?
  rm -f "$rootfs/tmp/build-ca.crt"
  umount "$rootfs/proc" "$rootfs/dev"
  return $rc
}

agent_base() { # prints the base root directory, building it once per key
  local key base tmp mirror_uri
  key=$( (echo "$SUITE"; cat "$ROOT/image/agent-packages.txt" "$ROOT/image/install-agent.sh" "$ROOT/pyproject.toml") | sha256sum | cut -c1-16)
  base=$CACHE/agent-base-$key
  if [ ! -d "$base/root" ]; then
    mirror_uri=$(mirror)
    tmp=$CACHE/.agent-base-$key.tmp
    mkdir -p "$tmp"
    # Each step leaves a mark, so an interrupted build goes on where it stopped.
    if [ ! -e "$tmp/debootstrap.done" ]; then
      rm -rf "$tmp/root"
      log "agent base: debootstrap $SUITE from $mirror_uri (minutes)"
      debootstrap --variant=minbase "$SUITE" "$tmp/root" "$mirror_uri" >"$tmp/debootstrap.log" 2>&1 || {
        tail -n 30 "$tmp/debootstrap.log" >&2; exit 1; }
      # The Dockerfile's base image has bookworm, bookworm-updates and bookworm-security.
      local sec=${mirror_uri%/debian}/debian-security
      printf 'deb %s %s main\ndeb %s %s-updates main\ndeb %s %s-security main\n' \
        "$mirror_uri" "$SUITE" "$mirror_uri" "$SUITE" "$sec" "$SUITE" > "$tmp/root/etc/apt/sources.list"
      touch "$tmp/debootstrap.done"
    fi
    mkdir -p "$tmp/root/src/image"
    cp "$ROOT/image/agent-packages.txt" "$ROOT/image/install-agent.sh" "$tmp/root/src/image/"
    cp "$ROOT/pyproject.toml" "$tmp/root/src/"
    for step in packages deps; do
      [ -e "$tmp/$step.done" ] && continue
      log "agent base: install-agent.sh $step"
      chroot_run "$tmp/root" sh /src/image/install-agent.sh $step /src >"$tmp/$step.log" 2>&1 || {
        tail -n 30 "$tmp/$step.log" >&2; exit 1; }
      touch "$tmp/$step.done"
    done
    rm -rf "$tmp/root/src" "$tmp/root/var/cache/apt/archives/"*.deb "$tmp/root/etc/resolv.conf"
    : > "$tmp/root/etc/resolv.conf"
    mv "$tmp" "$base"
    prune 'agent-base-*' "$base"
    log "agent base: built $base"
  fi
  echo "$base"
}

build_agent() {
  local base key out tmp merged upper rc=0
  base=$(agent_base)
  key=$( (basename "$base"; cd "$ROOT" && tar -c --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
    --exclude=__pycache__ pyproject.toml README.md bpf image operator/tpfilter scripts/agent-entrypoint.sh) |
    sha256sum | cut -c1-16)
  out=$CACHE/agent-$key.tar
  if [ ! -s "$out" ]; then
    tmp=$(mktemp -d "$CACHE/.agent.XXXXXX")
    upper=$tmp/upper; merged=$tmp/merged
    mkdir -p "$upper" "$tmp/work" "$merged"
    mount -t overlay overlay -o "lowerdir=$base/root,upperdir=$upper,workdir=$tmp/work" "$merged"
    mkdir -p "$merged/src/operator"
    (cd "$ROOT" && cp -r pyproject.toml README.md bpf image "$merged/src/" && cp -r operator/tpfilter "$merged/src/operator/")
    find "$merged/src" -name __pycache__ -prune -exec rm -rf {} +
    install -D -m 0755 "$ROOT/scripts/agent-entrypoint.sh" "$merged/usr/local/bin/agent-entrypoint.sh"
    chroot_run "$merged" sh /src/image/install-agent.sh project /src >"$tmp/project.log" 2>&1 || rc=$?
    rm -rf "$merged/src" "$merged/root/.cache"
    umount "$merged"
    if [ $rc -ne 0 ]; then tail -n 30 "$tmp/project.log" >&2; rm -rf "$tmp"; exit 1; fi
    # Files the project step deleted from the base would be overlay whiteouts (character
    # devices), which an OCI layer spells differently: there must be none.
    if [ -n "$(find "$upper" -type c -print -quit)" ]; then
      log "agent: the project step deleted base files: $(find "$upper" -type c | head -n 5)"; exit 1
    fi
    rmdir "$upper/src" 2>/dev/null || true
    oci "$out" tpfilter.local/tpfilter:dev "$base/root" "$upper" \
      --entrypoint /usr/local/bin/agent-entrypoint.sh tpfilter --cmd agent \
      --env VIRTUAL_ENV=/opt/tpfilter --env PYTHONUNBUFFERED=1 --env PYTHONDONTWRITEBYTECODE=1 \
      --env PATH=/opt/tpfilter/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
    rm -rf "$tmp"
    prune 'agent-*.tar' "$out"
    log "agent: built $out"
  fi
  echo "AGENT_IMAGE=$out"
}

build_pause
build_busybox
build_agent
