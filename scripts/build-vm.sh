#!/usr/bin/env bash
# Builds, from Debian's packages only, a stock Debian kernel + guest root that tests boot
# in QEMU (tpfilter_dev.vm) to run what this machine's kernel cannot: kprobes, kretprobes,
# BPF LSM, fmod_ret. Cached under ${TPFILTER_CACHE:-/var/cache/tpfilter}/vm, keyed by the
# kernel version (from `apt-cache depends linux-image-amd64`) and this script:
#
#   kernel-<KV>/                 the unpacked linux-image-<KV> package (not installed)
#   root-<key>/                  debootstrap bookworm + python3-bpfcc, bpftool,
#                                linux-headers-<KV> (bcc compiles against the guest kernel's
#                                own headers), a venv /opt/tpfilter with the project's
#                                dependencies and pytest (the project itself comes over 9p)
#   initrd-<key>.gz              busybox-static + the virtio/9p modules of that kernel
#   current.env                  KV=, KERNEL=, ROOT=, INITRD= of the newest build
#
# Root; installs qemu-system-x86, debootstrap, busybox-static, cpio via apt if missing.
# Idempotent: a cached build costs seconds. Cold: see README ("VM tests").
set -euo pipefail
SRC=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${TPFILTER_CACHE:-/var/cache/tpfilter}/vm
SUITE=bookworm
mkdir -p "$CACHE"
exec 9>"$CACHE/.build.lock"
flock 9
log() { echo "build-vm: $*" >&2; }

need=()
for p in qemu-system-x86 debootstrap busybox-static cpio; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if ((${#need[@]})); then
  log "apt: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

KV=$(apt-cache depends linux-image-amd64 | sed -n 's/.*Depends: linux-image-\(.*\)$/\1/p' | head -n1)
[ -n "$KV" ] || { log "no linux-image-amd64 dependency found"; exit 1; }

mirror() { # the Debian mirror apt uses on this machine (the only one reachable)
  local uri
  uri=$(grep -hsE '^(URIs:|deb )' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list /etc/apt/sources.list 2>/dev/null |
    grep -v security | head -n1 | sed -E 's/^URIs:[[:space:]]*//; s/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?//; s/[[:space:]].*$//')
  echo "${uri:-http://deb.debian.org/debian}"
}

# The modules that mount the root over virtio-9p, in load order (the initramfs loads them).
MODS="virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci netfs fscache 9pnet 9pnet_virtio 9p"

# 1. The kernel, unpacked (unpacking into a merged-/usr root would replace its /lib link);
# of its modules only those (the guest loads no others): 400 MB less.
KDIR=$CACHE/kernel-$KV
if [ ! -e "$KDIR/boot/vmlinuz-$KV" ]; then
  tmp=$(mktemp -d "$CACHE/.kernel.XXXXXX")
  (cd "$tmp" && apt-get download -qq "linux-image-$KV" && dpkg-deb -x linux-image-*.deb unpacked)
  keep=$(for m in $MODS; do printf -- '-not -name %s.ko* ' "$m"; done)
  # shellcheck disable=SC2086
  (set -f; find "$tmp/unpacked/lib/modules" -type f -name "*.ko*" $keep -delete)
  rm -rf "$KDIR"; mv "$tmp/unpacked" "$KDIR"; rm -rf "$tmp"
  log "kernel: $KDIR"
fi

# 2. The guest root.
key=$( (echo "$SUITE $KV"; cat "$0" "$SRC/pyproject.toml") | sha256sum | cut -c1-16)
ROOT=$CACHE/root-$key
chroot_run() { # ROOTFS CMD...: with /dev, /proc, the host's resolver and CA bundle
  local rootfs=$1; shift
  mount --bind /dev "$rootfs/dev"
  mount -t proc proc "$rootfs/proc"
  cp /etc/resolv.conf "$rootfs/etc/resolv.conf"
  cp /etc/ssl/certs/ca-certificates.crt "$rootfs/tmp/build-ca.crt"
  local rc=0
  env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive \
    PIP_CERT=/tmp/build-ca.crt chroot "$rootfs" "$@" || rc=$?
  rm -f "$rootfs/tmp/build-ca.crt"
  umount "$rootfs/proc" "$rootfs/dev"
  return $rc
}
if [ ! -d "$ROOT" ]; then
  tmp=$CACHE/.root-$key.tmp
  mkdir -p "$tmp"
  # Each step leaves a mark, so an interrupted build goes on where it stopped.
  if [ ! -e "$tmp/debootstrap.done" ]; then
    rm -rf "$tmp/root"
    log "debootstrap $SUITE from $(mirror)"
    debootstrap --variant=minbase "$SUITE" "$tmp/root" "$(mirror)" >"$tmp/debootstrap.log" 2>&1 || {
      tail -n 30 "$tmp/debootstrap.log" >&2; exit 1; }
    m=$(mirror)
    cat >"$tmp/root/etc/apt/sources.list" <<EOF
deb $m $SUITE main
deb $m $SUITE-updates main
deb ${m%/debian}/debian-security $SUITE-security main
EOF
    touch "$tmp/debootstrap.done"
  fi
  if [ ! -e "$tmp/packages.done" ]; then
    log "guest packages (bcc, bpftool, linux-headers-$KV)"
    chroot_run "$tmp/root" sh -c "apt-get update -qq && apt-get install -y -qq --no-install-recommends \
      python3-bpfcc bpftool linux-headers-$KV python3-venv python3-pip util-linux procps kmod iproute2" \
      >"$tmp/packages.log" 2>&1 || { tail -n 30 "$tmp/packages.log" >&2; exit 1; }
    touch "$tmp/packages.done"
  fi
  if [ ! -e "$tmp/deps.done" ]; then
    log "guest venv /opt/tpfilter (the project's dependencies + pytest)"
    /usr/bin/python3 -c 'import sys, tomllib; d = tomllib.load(open(sys.argv[1], "rb"))["project"]; print("\n".join(d["dependencies"] + [x for x in d["optional-dependencies"]["dev"] if x.split(">")[0] in ("pytest", "pytest-timeout", "hypothesis")]))' \
      "$SRC/pyproject.toml" >"$tmp/root/tmp/requirements.txt"
    chroot_run "$tmp/root" sh -c "/usr/bin/python3 -m venv --system-site-packages /opt/tpfilter && \
      /opt/tpfilter/bin/pip install -q --no-cache-dir --disable-pip-version-check -r /tmp/requirements.txt" \
      >"$tmp/deps.log" 2>&1 || { tail -n 30 "$tmp/deps.log" >&2; exit 1; }
    touch "$tmp/deps.done"
  fi
  # Mount points the guest's init uses; /src is the repository (9p), /job the run's files.
  mkdir -p "$tmp/root/src" "$tmp/root/job"
  rm -rf "$tmp/root/var/cache/apt/archives/"*.deb "$tmp/root/var/lib/apt/lists/"* "$tmp/root/tmp/"*
  : >"$tmp/root/etc/resolv.conf"
  mv "$tmp/root" "$ROOT"; rm -rf "$tmp"
  for old in "$CACHE"/root-*; do [ "$old" = "$ROOT" ] || rm -rf "$old"; done
  log "root: $ROOT"
fi

# 3. The initramfs: busybox + the modules that mount the root over virtio-9p.
INITRD=$CACHE/initrd-$key.gz
if [ ! -s "$INITRD" ]; then
  tmp=$(mktemp -d "$CACHE/.initrd.XXXXXX")
  mkdir -p "$tmp"/{bin,dev,proc,sys,newroot,lib/modules}
  cp /bin/busybox "$tmp/bin/busybox"
  for a in sh mount mkdir insmod switch_root echo cat sleep; do ln -s busybox "$tmp/bin/$a"; done
  for m in $MODS; do
    f=$(find "$KDIR/lib/modules/$KV" -name "$m.ko*" | head -n1)
    [ -n "$f" ] || { log "module $m not in the kernel package (built in?)"; continue; }
    case "$f" in
      *.xz) xz -dc "$f" >"$tmp/lib/modules/$m.ko" ;;
      *.zst) zstd -qdc "$f" >"$tmp/lib/modules/$m.ko" ;;
      *) cp "$f" "$tmp/lib/modules/$m.ko" ;;
    esac
  done
  cat >"$tmp/init" <<EOF
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $MODS; do [ -e /lib/modules/\$m.ko ] && insmod /lib/modules/\$m.ko; done
o=trans=virtio,version=9p2000.L,msize=512000
mount -t 9p -o \$o,cache=loose,ro root /newroot || { echo "TPF-VM: no root"; echo o >/proc/sysrq-trigger; }
mount -t 9p -o \$o src /newroot/src
mount -t 9p -o \$o job /newroot/job
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot /bin/sh /job/init.sh
EOF
  chmod +x "$tmp/init"
  (cd "$tmp" && find . | cpio -o -H newc --quiet | gzip -1) >"$INITRD.tmp"
  mv "$INITRD.tmp" "$INITRD"; rm -rf "$tmp"
  for old in "$CACHE"/initrd-*.gz; do [ "$old" = "$INITRD" ] || rm -f "$old"; done
  log "initrd: $INITRD"
fi
for old in "$CACHE"/kernel-*; do [ "$old" = "$KDIR" ] || rm -rf "$old"; done

cat >"$CACHE/current.env.tmp" <<EOF
KV=$KV
KERNEL=$KDIR/boot/vmlinuz-$KV
ROOT=$ROOT
INITRD=$INITRD
EOF
mv "$CACHE/current.env.tmp" "$CACHE/current.env"
cat "$CACHE/current.env"
