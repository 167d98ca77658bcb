"""OCI image layout tars without Docker or a registry, from root directories.

Why: the real-node e2e suite (``tpfilter_dev.realnode``) runs the agent image and small
test images in containerd on a machine with no Docker engine and no registry. An OCI
image layout (``oci-layout``, ``index.json``, ``blobs/sha256/...``) in a tar is what
``ctr images import`` takes, and is a few dozen lines to write.

Reproducible: layers are tars made with sorted names, numeric owners and every mtime set
to a fixed epoch; the config carries no creation time. The same root directories give
the same image digest.

Run: ``python -m tpfilter_dev.ociimage OUT.tar REF ROOT [ROOT ...] [--entrypoint ...]
[--cmd ...] [--env K=V ...] [--workdir DIR]`` (each ROOT is one layer, lowest first).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import subprocess
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar"
EPOCH = 0  # every file's mtime in a layer: the same input, the same digest


@dataclass(frozen=True)
class ImageConfig:
    entrypoint: Sequence[str] = ()
    cmd: Sequence[str] = ()
    env: Sequence[str] = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",)
    workdir: str = "/"
    labels: dict[str, str] = field(default_factory=dict)


def layer_tar(root: Path, out: Path) -> None:
    """A layer: ``root``'s tree as a tar, sorted, numeric owners, fixed mtimes.

    GNU tar, because it stores devices, hard links, xattrs-free special files and long
    names the way container runtimes unpack them.
    """
    subprocess.run(
        [
            "tar",
            "--create",
            f"--file={out}",
            f"--directory={root}",
            "--sort=name",
            "--numeric-owner",
            f"--mtime=@{EPOCH}",
            "--format=posix",
            "--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime",
            ".",
        ],
        check=True,
    )


def _sha256_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest(), path.stat().st_size


def _blob(data: bytes) -> tuple[str, bytes]:
    return hashlib.sha256(data).hexdigest(), data


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = EPOCH
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def write_image(out: Path, ref: str, layers: Sequence[Path], config: ImageConfig) -> str:
    """Write an OCI layout tar holding one image tagged ``ref``; returns its manifest digest.

    ``layers`` are layer tars (see :func:`layer_tar`), lowest first.
    """
    layer_digests = [_sha256_file(path) for path in layers]
    image_config = {
        "architecture": "amd64" if os.uname().machine == "x86_64" else os.uname().machine,
        "os": "linux",
        "config": {
            "Entrypoint": list(config.entrypoint) or None,
            "Cmd": list(config.cmd) or None,
            "Env": list(config.env),
            "WorkingDir": config.workdir,
            "Labels": dict(config.labels) or None,
        },
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{d}" for d, _ in layer_digests]},
    }
    config_digest, config_bytes = _blob(json.dumps(image_config, sort_keys=True).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {
            "mediaType": MEDIA_CONFIG,
            "digest": f"sha256:{config_digest}",
            "size": len(config_bytes),
        },
        "layers": [
            {"mediaType": MEDIA_LAYER, "digest": f"sha256:{d}", "size": size}
            for d, size in layer_digests
        ],
    }
    manifest_digest, manifest_bytes = _blob(json.dumps(manifest, sort_keys=True).encode())
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": MEDIA_MANIFEST,
                "digest": f"sha256:{manifest_digest}",
                "size": len(manifest_bytes),
                "annotations": {"org.opencontainers.image.ref.name": ref},
            }
        ],
    }
    tmp = out.with_name(f".{out.name}.tmp")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        _add_bytes(tar, "oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
        _add_bytes(tar, "index.json", json.dumps(index, sort_keys=True).encode())
        _add_bytes(tar, f"blobs/sha256/{config_digest}", config_bytes)
        _add_bytes(tar, f"blobs/sha256/{manifest_digest}", manifest_bytes)
        written = set()
        for path, (digest, _) in zip(layers, layer_digests, strict=True):
            if digest in written:
                continue
            written.add(digest)
            info = tar.gettarinfo(str(path), arcname=f"blobs/sha256/{digest}")
            info.mtime, info.uid, info.gid, info.uname, info.gname = EPOCH, 0, 0, "", ""
            with open(path, "rb") as f:
                tar.addfile(info, f)
    tmp.replace(out)
    return f"sha256:{manifest_digest}"


def build(out: Path, ref: str, roots: Sequence[Path], config: ImageConfig) -> str:
    """Layer tars of ``roots`` (lowest first), then the image; returns the manifest digest."""
    with tempfile.TemporaryDirectory(prefix="tpf-oci-", dir=out.parent) as tmp:
        layers = []
        for i, root in enumerate(roots):
            layer = Path(tmp) / f"layer{i}.tar"
            layer_tar(root, layer)
            layers.append(layer)
        return write_image(out, ref, layers, config)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("ref")
    parser.add_argument("roots", type=Path, nargs="+")
    parser.add_argument("--entrypoint", nargs="*", default=[])
    parser.add_argument("--cmd", nargs="*", default=[])
    parser.add_argument("--env", action="append", default=[])
    parser.add_argument("--workdir", default="/")
    args = parser.parse_args(argv)
    given = {e.split("=", 1)[0] for e in args.env}
    default_env = [e for e in ImageConfig().env if e.split("=", 1)[0] not in given]
    config = ImageConfig(
        entrypoint=args.entrypoint,
        cmd=args.cmd,
        env=[*default_env, *args.env],
        workdir=args.workdir,
    )
    print(build(args.out, args.ref, args.roots, config))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
