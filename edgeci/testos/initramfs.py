"""The test OS initramfs: a gzip'd newc cpio written in pure Python (no cpio/busybox cpio needed).

Contents: /init (a minimal ostree-prepare-root in shell, edgeci.testos.scripts.PREPARE_ROOT),
busybox-static with its applet links, the disk/ext4 kernel modules with modules.dep, /etc/edgeci/modules
(their load order) and /dev/console (so init has a console before devtmpfs is mounted). Output is
byte-for-byte reproducible (fixed mtimes, sorted entries, gzip mtime 0).
"""

from __future__ import annotations

import gzip
import io
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from edgeci.testos.kernel import Kernel
from edgeci.testos.scripts import PREPARE_ROOT

MAGIC = b"070701"
TRAILER = "TRAILER!!!"


@dataclass
class Entry:
    name: str  # path inside the archive, no leading slash
    mode: int  # full st_mode (type bits included)
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


class CpioWriter:
    """newc ("070701") cpio: 110-byte ASCII header, name + NUL padded to 4, data padded to 4."""

    def __init__(self, out: io.BufferedIOBase | gzip.GzipFile, mtime: int = 0) -> None:
        self.out = out
        self.mtime = mtime
        self.ino = 300000

    def _pad(self, n: int) -> None:
        if n % 4:
            self.out.write(b"\0" * (4 - n % 4))

    def add(self, e: Entry) -> None:
        self.ino += 1
        name = e.name.encode() + b"\0"
        fields = (self.ino, e.mode, 0, 0, 1 if not stat.S_ISDIR(e.mode) else 2, self.mtime, len(e.data),
                  0, 0, e.rdev[0], e.rdev[1], len(name), 0)
        header = MAGIC + b"".join(b"%08X" % v for v in fields)
        self.out.write(header)
        self.out.write(name)
        self._pad(len(header) + len(name))
        self.out.write(e.data)
        self._pad(len(e.data))

    def close(self) -> None:
        self.ino = 0
        self.add(Entry(TRAILER, 0))


def write_cpio(entries: Iterable[Entry], *, compress: bool = True) -> bytes:
    buf = io.BytesIO()
    if compress:
        with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=6, mtime=0) as gz:
            w = CpioWriter(gz)
            for e in entries:
                w.add(e)
            w.close()
    else:
        w = CpioWriter(buf)
        for e in entries:
            w.add(e)
        w.close()
    return buf.getvalue()


def _dir(name: str, mode: int = 0o755) -> Entry:
    return Entry(name, stat.S_IFDIR | mode)


def _file(name: str, data: bytes, mode: int = 0o644) -> Entry:
    return Entry(name, stat.S_IFREG | mode, data)


def _link(name: str, target: str) -> Entry:
    return Entry(name, stat.S_IFLNK | 0o777, target.encode())


def entries(kernel: Kernel, busybox: Path, applets: list[str]) -> list[Entry]:
    """Everything in the initramfs, parents before children."""
    mods = f"lib/modules/{kernel.kver}"
    out = [_dir(d) for d in ("bin", "dev", "etc", "etc/edgeci", "lib", "lib/modules", mods, "newroot", "proc",
                             "run", "sys", "sysroot", "tmp")]
    out.append(Entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)))
    out.append(Entry("dev/null", stat.S_IFCHR | 0o666, rdev=(1, 3)))
    out.append(_file("init", PREPARE_ROOT.encode(), 0o755))
    out.append(_file("bin/busybox", busybox.read_bytes(), 0o755))
    out += [_link(f"bin/{a}", "busybox") for a in sorted(set(applets)) if a not in ("busybox", "init")]
    seen_dirs: set[str] = set()
    for rel in kernel.load_order:
        parts = rel.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in seen_dirs:
                out.append(_dir(f"{mods}/{d}"))
                seen_dirs.add(d)
        out.append(_file(f"{mods}/{rel}", (kernel.modules_root / rel).read_bytes()))
    out.append(_file(f"{mods}/modules.dep", kernel.modules_dep().encode()))
    out.append(_file("etc/edgeci/modules", "".join(f"/{mods}/{rel}\n" for rel in kernel.load_order).encode()))
    return out


def build(kernel: Kernel, busybox: Path, applets: list[str]) -> bytes:
    """The gzip'd initramfs image."""
    return write_cpio(entries(kernel, busybox, applets))


def read_cpio(data: bytes) -> list[Entry]:
    """Parse a (gzip'd) newc archive: used by tests and to inspect a built initramfs."""
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    out: list[Entry] = []
    pos = 0
    while True:
        if data[pos:pos + 6] != MAGIC:
            raise ValueError(f"bad cpio magic at offset {pos}")
        fields = [int(data[pos + 6 + 8 * i: pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, rmaj, rmin, namesize = fields[1], fields[6], fields[9], fields[10], fields[11]
        pos += 110
        name = data[pos:pos + namesize - 1].decode()
        pos += namesize
        pos += (4 - pos % 4) % 4
        body = data[pos:pos + size]
        pos += size
        pos += (4 - pos % 4) % 4
        if name == TRAILER:
            return out
        out.append(Entry(name, mode, body, (rmaj, rmin)))
