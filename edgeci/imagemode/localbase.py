"""edgeci's local bootable base image: what `FROM ${BASE}` builds on where registry.redhat.io is not reachable.

A tiny tree that looks like a bootc base where the stages look: busybox as /usr/bin/sh, os-release, a kernel
under /usr/lib/modules/<kver>/vmlinuz (a stand-in file: `ostree admin deploy` needs one; the sysroot device
never boots it), a dpkg database (the build's package list), and the bootc labels. Built once with buildah
(FROM scratch, ADD the tree) into an OCI archive cached under the build directory; `build.import_base` loads it
into a build's private storage under LOCAL_BASE_NAME, and the image's Containerfile gets `--build-arg BASE=…`.
On a RHEL host the base is registry.redhat.io/rhel10/rhel-bootc (image_mode.base: "" or a pinned reference),
through the same build code.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from pathlib import Path

from edgeci.errors import ToolError

LOCAL_BASE_NAME = "localhost/edgeci/bootc-base:local"
KVER = "6.1.0-edgeci"
DPKG_STATUS = (
    "Package: busybox\nStatus: install ok installed\nMaintainer: edgeci <edgeci@localhost>\nArchitecture: amd64\n"
    "Version: 1:1.35.0-4+b3\nDescription: tiny utilities\n\n"
    "Package: ostree\nStatus: install ok installed\nMaintainer: edgeci <edgeci@localhost>\nArchitecture: amd64\n"
    "Version: 2022.7-2\nDescription: content-addressed filesystem\n\n"
)
TOOLS = ("sh", "cat", "echo", "ls", "mkdir", "uname", "test", "grep")


def _busybox() -> Path:
    found = shutil.which("busybox") or ("/bin/busybox" if os.path.exists("/bin/busybox") else None)
    if not found:
        raise ToolError("busybox is not installed (the local bootable base image is made of it)",
                        fix="apt-get install busybox-static, or set image_mode.base to a real bootc base")
    return Path(found)


def write_rootfs_tar(dest: Path, work: Path) -> None:
    """The base's tree as a tar file."""
    root = work / "rootfs"
    (root / "usr" / "bin").mkdir(parents=True)
    shutil.copy2(_busybox(), root / "usr" / "bin" / "busybox")
    for tool in TOOLS:
        (root / "usr" / "bin" / tool).symlink_to("busybox")
    (root / "bin").symlink_to("usr/bin")
    modules = root / "usr" / "lib" / "modules" / KVER
    modules.mkdir(parents=True)
    (modules / "vmlinuz").write_bytes(b"\x7fedgeci kernel stand-in (the sysroot device does not boot it)\n" * 64)
    (root / "usr" / "lib" / "os-release").write_text(
        'NAME="edgeci bootc test base"\nID=edgeci-bootc\nVERSION_ID="10.0"\nVERSION="10.0"\n')
    (root / "etc").mkdir()
    (root / "etc" / "os-release").symlink_to("../usr/lib/os-release")
    (root / "var" / "lib" / "dpkg").mkdir(parents=True)
    (root / "var" / "lib" / "dpkg" / "status").write_text(DPKG_STATUS)
    with tarfile.open(dest, "w") as tar:
        tar.add(root, arcname=".")


def ensure_local_base(cache_dir: Path) -> Path:
    """The base as an OCI archive under `cache_dir` (built once; rebuilt when missing)."""
    from edgeci.imagemode.build import private_storage
    from edgeci.tools import buildah

    archive = cache_dir / "bootc-base.oci.tar"
    if archive.is_file():
        return archive
    cache_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="edgeci-base-", dir=cache_dir))
    try:
        write_rootfs_tar(work / "rootfs.tar", work)
        (work / "Containerfile").write_text("FROM scratch\nADD rootfs.tar /\n"
                                            "LABEL containers.bootc=1 ostree.bootable=1\n")
        with private_storage(work) as st:
            r = buildah.bud(st, work / "Containerfile", work, LOCAL_BASE_NAME)
            if not r.ok:
                raise ToolError(f"cannot build the local bootc base: {(r.stderr.strip().splitlines() or ['?'])[-1]}",
                                where=str(work))
            tmp = archive.with_name(archive.name + ".tmp")
            buildah.push(st, LOCAL_BASE_NAME, f"oci-archive:{tmp}")
            os.replace(tmp, archive)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return archive
