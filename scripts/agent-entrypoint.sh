#!/usr/bin/env bash
# Entrypoint of the agent image (Dockerfile): prepares the node-facing bits, then execs its
# arguments (the image runs `agent-entrypoint.sh tpfilter agent ...`).
#
# 1. Kernel headers, for BPF programs bcc compiles at run time (the agent's own map work,
#    plain bpf(2) calls, needs none). bcc looks in /lib/modules/$(uname -r)/{build,source}
#    and, when those are missing, unpacks /sys/kernel/kheaders.tar.xz (CONFIG_IKHEADERS).
#    In order of preference:
#      a. headers already in /lib/modules/$(uname -r) of the container: kept;
#      b. the node's own headers for the running kernel, from the host's /lib/modules and
#         /usr/src mounted under $TPFILTER_HOST_ROOT (the chart mounts them at /host);
#      c. the kernel's own kheaders archive: left to bcc;
#      d. the image's Debian headers (linux-headers-<arch>, bookworm's 6.1): linked, with a
#         warning. They match the running kernel only by chance: fine for map definitions
#         and BTF-typed programs (tp_btf, raw tracepoint args), a risk for anything that
#         reads kernel structs through them.
# 2. bpffs: when $TPFILTER_MOUNT_BPFFS=1 and /sys/fs/bpf is not a bpffs, mount one there.
#    The chart mounts the host's /sys/fs/bpf with Bidirectional propagation, so the mount
#    appears on the node and the pins outlive this container.
# 3. RLIMIT_MEMLOCK: unlimited, for kernels before 5.11 that charge BPF maps to it.
# Nothing here is fatal except a failed bpffs mount: the agent's own probe reports the rest.
set -euo pipefail

HOST_ROOT=${TPFILTER_HOST_ROOT-/host}
BPFFS=${TPFILTER_BPFFS:-/sys/fs/bpf}
log() { echo "agent-entrypoint: $*" >&2; }

# A host path (absolute, as on the node) -> the same file under $HOST_ROOT, following
# symlinks of the last component the way the host would (absolute targets stay on the host).
host_resolve() {
  local p="$HOST_ROOT$1" t i
  for ((i = 0; i < 16; i++)); do
    [ -L "$p" ] || break
    t=$(readlink "$p")
    case $t in
      /*) p="$HOST_ROOT$t" ;;
      *) p="$(dirname "$p")/$t" ;;
    esac
  done
  printf '%s\n' "$p"
}

link_headers() {
  local release kmod build source hdr common
  release=$(uname -r)
  kmod=/lib/modules/$release
  if [ -e "$kmod/build/include" ]; then
    return
  fi
  if [ -n "$HOST_ROOT" ] && [ -d "$HOST_ROOT/lib/modules/$release" ]; then
    build=$(host_resolve "/lib/modules/$release/build")
    source=$(host_resolve "/lib/modules/$release/source")
    if [ -d "$build/include" ] || [ -d "$build/arch" ]; then
      mkdir -p "$kmod"
      ln -sfn "$build" "$kmod/build"
      if [ -d "$source" ]; then ln -sfn "$source" "$kmod/source"; fi
      log "kernel headers: the node's, $kmod/build -> $build"
      return
    fi
  fi
  if [ -e /sys/kernel/kheaders.tar.xz ]; then
    log "kernel headers: /sys/kernel/kheaders.tar.xz (bcc unpacks it)"
    return
  fi
  hdr=$(ls -d /usr/src/linux-headers-*-"$(dpkg --print-architecture)" 2>/dev/null | sort -V | tail -n1 || true)
  common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n1 || true)
  if [ -z "$hdr" ]; then
    log "kernel headers: none for $release (bcc cannot compile programs; the agent does not need it)"
    return
  fi
  mkdir -p "$kmod"
  ln -sfn "$hdr" "$kmod/build"
  if [ -n "$common" ]; then ln -sfn "$common" "$kmod/source"; fi
  log "kernel headers: WARNING: the node has none for $release; using the image's $(basename "$hdr")" \
    "(layouts of kernel structs may differ from the running kernel)"
}

mount_bpffs() {
  [ "${TPFILTER_MOUNT_BPFFS:-0}" = 1 ] || return 0
  if [ "$(stat -f -c %T "$BPFFS" 2>/dev/null)" = bpf_fs ]; then
    return
  fi
  mkdir -p "$BPFFS"
  mount -t bpf bpf "$BPFFS"
  log "mounted a bpffs on $BPFFS"
}

link_headers || log "kernel headers: setup failed; continuing"
mount_bpffs
ulimit -l unlimited 2>/dev/null || ulimit -l "$(ulimit -H -l)" 2>/dev/null ||
  log "RLIMIT_MEMLOCK stays $(ulimit -l) (only kernels before 5.11 charge BPF maps to it)"

exec "$@"
