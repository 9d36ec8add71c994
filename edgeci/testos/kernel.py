"""The test OS kernel: Debian's linux-image-amd64, downloaded once and cached, or a path from config.

The cache (cfg.composer.cache_dir or ~/.cache/edgeci, under kernel/) keeps only what a boot from an
ext4 virtio disk needs: vmlinuz, the modules for virtio-blk + ext4 with their dependencies (read from
each module's .modinfo, since Debian's package ships no modules.dep: depmod runs at install time), a
modules.dep for that subset and manifest.json with every file's sha256, written last. A cache whose
manifest is missing or whose files do not match it is partial or corrupt and is rebuilt.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import lzma
import os
import shutil
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from edgeci.errors import ConfigError, ToolError
from edgeci.oci import sha256_file
from edgeci.tools.run import run

META_PACKAGE = "linux-image-amd64"
# What the initramfs loads, in this order after their dependencies: the disk driver stack and ext4.
# crc32c_generic is ext4's and jbd2's soft dependency ("softdep=pre: crc32c"): the kernel would
# request_module() it through a modprobe the initramfs does not have.
ROOT_MODULES = ("virtio_pci", "virtio_blk", "crc32c_generic", "ext4")
MANIFEST = "manifest.json"
CACHE_SCHEMA = 1


class KernelError(ToolError):
    """The kernel could not be fetched, or the cache or configured kernel is unusable."""


@dataclass
class Kernel:
    """A kernel ready to go into the test OS tree."""

    kver: str
    vmlinuz: Path
    modules_root: Path  # directory holding the relative module paths of load_order
    load_order: list[str]  # module paths relative to modules_root, dependencies first
    package: dict[str, str] = field(default_factory=dict)  # {name, version, release, arch}
    source: str = "cache"  # cache | config
    notes: list[str] = field(default_factory=list)  # e.g. "cache was corrupt (...): rebuilt"

    def modules_dep(self) -> str:
        return _modules_dep(self.modules_root, self.load_order)


def cache_dir(configured: str = "") -> Path:
    return Path(os.path.expanduser(configured)) if configured else Path.home() / ".cache" / "edgeci"


# -- .ko parsing -----------------------------------------------------------------------------------

def modinfo(path: Path) -> dict[str, list[str]]:
    """The key=value pairs of a module's .modinfo ELF section (keys may repeat: alias, softdep)."""
    with open(path, "rb") as f:
        ident = f.read(64)
        if len(ident) < 64 or ident[:4] != b"\x7fELF" or ident[4] != 2 or ident[5] != 1:
            raise KernelError(f"not a 64-bit little-endian ELF module: {path}")
        shoff = struct.unpack_from("<Q", ident, 0x28)[0]
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", ident, 0x3A)
        f.seek(shoff)
        table = f.read(shentsize * shnum)
        if len(table) < shentsize * shnum or shstrndx >= shnum:
            raise KernelError(f"truncated ELF section table: {path}")

        def header(i: int) -> tuple[int, int, int]:
            name, _type, _flags, _addr, offset, size = struct.unpack_from("<IIQQQQ", table, i * shentsize)
            return name, offset, size

        _, str_off, str_size = header(shstrndx)
        f.seek(str_off)
        names = f.read(str_size)
        for i in range(shnum):
            name_off, offset, size = header(i)
            if names[name_off:names.find(b"\0", name_off)] == b".modinfo":
                f.seek(offset)
                data = f.read(size)
                break
        else:
            raise KernelError(f"module has no .modinfo section: {path}")
    info: dict[str, list[str]] = {}
    for item in data.split(b"\0"):
        key, sep, value = item.decode("utf-8", "replace").partition("=")
        if sep:
            info.setdefault(key, []).append(value)
    return info


def _module_name(relpath: str) -> str:
    base = relpath.rsplit("/", 1)[-1]
    for suffix in (".ko.xz", ".ko"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
    return base.replace("-", "_")


def _index(modules_dir: Path) -> dict[str, str]:
    """module name → path relative to modules_dir, for every .ko below kernel/."""
    out: dict[str, str] = {}
    for p in sorted((modules_dir / "kernel").rglob("*.ko*")):
        if p.name.endswith((".ko", ".ko.xz")):
            out[_module_name(p.name)] = p.relative_to(modules_dir).as_posix()
    return out


def _readable_module(path: Path, tmp: Path) -> Path:
    """An uncompressed copy for .ko.xz (modinfo and insmod want plain ELF)."""
    if path.name.endswith(".ko.xz"):
        plain = tmp / (path.name[:-3])
        plain.write_bytes(lzma.decompress(path.read_bytes()))
        return plain
    return path


def resolve_modules(modules_dir: Path, roots: tuple[str, ...] = ROOT_MODULES) -> list[str]:
    """Module paths (relative to modules_dir) for `roots` and their dependencies, dependencies first.

    Hard dependencies come from `depends=`; `softdep=pre:` names are resolved through the aliases
    of all modules (preferring a *_generic implementation, which works on any CPU, TCG included).
    """
    index = _index(modules_dir)
    infos: dict[str, dict[str, list[str]]] = {}
    aliases: dict[str, list[str]] | None = None
    order: list[str] = []
    visiting: set[str] = set()

    def info(name: str) -> dict[str, list[str]]:
        if name not in infos:
            with tempfile.TemporaryDirectory() as t:
                infos[name] = modinfo(_readable_module(modules_dir / index[name], Path(t)))
        return infos[name]

    def by_alias(alias: str) -> str | None:
        nonlocal aliases
        if alias in index:
            return alias
        if aliases is None:
            aliases = {}
            for name in index:
                if "crypto" not in index[name]:  # soft dependencies here are crypto algorithms
                    continue
                for a in info(name).get("alias", []):
                    aliases.setdefault(a, []).append(name)
        names = aliases.get(alias) or aliases.get(f"crypto-{alias}") or []
        names = sorted(names, key=lambda n: (not n.endswith("_generic"), n))
        return names[0] if names else None

    def visit(name: str) -> None:
        if index.get(name) in order or name in visiting:
            return
        if name not in index:
            raise KernelError(f"kernel module '{name}' is not in {modules_dir}",
                              fix="use a kernel that builds virtio_blk and ext4 (as modules or built in)")
        visiting.add(name)
        mi = info(name)
        deps = [d for v in mi.get("depends", []) for d in v.split(",") if d]
        for soft in mi.get("softdep", []):
            pre = soft.split("post:")[0]
            if "pre:" in pre:
                for alias in pre.split("pre:", 1)[1].split():
                    target = by_alias(alias)
                    if target:
                        deps.append(target)
        for d in deps:
            visit(d)
        visiting.discard(name)
        order.append(index[name])

    for root in roots:
        if root in index:
            visit(root)
    missing = [r for r in roots if r not in index and r not in ("crc32c_generic",)]
    if missing:
        raise KernelError(f"kernel modules {', '.join(missing)} are not in {modules_dir}",
                          fix="use a kernel package that has them (Debian's linux-image-amd64 does)")
    return order


def _modules_dep(modules_root: Path, load_order: list[str]) -> str:
    """modules.dep (depmod format) for the subset: each module with its transitive dependencies."""
    deps: dict[str, list[str]] = {}
    index = {_module_name(p): p for p in load_order}
    for rel in load_order:
        with tempfile.TemporaryDirectory() as t:
            mi = modinfo(_readable_module(modules_root / rel, Path(t)))
        direct = [index[d] for v in mi.get("depends", []) for d in v.split(",") if d in index]
        closure: list[str] = []
        for d in direct:
            for x in [*deps.get(d, []), d]:
                if x not in closure:
                    closure.append(x)
        deps[rel] = closure
    # depmod lists dependencies so that the last one is loaded first
    return "".join(f"{rel}: {' '.join(reversed(deps[rel]))}".rstrip() + "\n" for rel in load_order)


def _is_bzimage(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            f.seek(0x202)
            return f.read(4) == b"HdrS"
    except OSError:
        return False


# -- the cache -------------------------------------------------------------------------------------

@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".kernel.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def verify_cache(kdir: Path) -> tuple[Kernel | None, str]:
    """(Kernel, "") for a complete cache; (None, reason) for a missing, partial or corrupt one."""
    manifest_path = kdir / MANIFEST
    if not kdir.exists():
        return None, "no cache"
    try:
        manifest = json.loads(manifest_path.read_text())
        files: dict[str, str] = manifest["files"]
        if manifest.get("schema") != CACHE_SCHEMA:
            return None, f"cache schema {manifest.get('schema')!r} is not {CACHE_SCHEMA}"
        kver, load_order, package = manifest["kver"], manifest["load_order"], manifest["package"]
    except FileNotFoundError:
        return None, f"{MANIFEST} is missing (an interrupted download?)"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return None, f"{MANIFEST} is unreadable ({e})"
    for rel, digest in files.items():
        p = kdir / rel
        if not p.is_file():
            return None, f"{rel} is missing"
        if sha256_file(p) != digest:
            return None, f"{rel} does not match its sha256"
    if "vmlinuz" not in files or not all(f"modules/{m}" in files for m in load_order):
        return None, f"{MANIFEST} does not list vmlinuz and every module"
    return Kernel(kver=kver, vmlinuz=kdir / "vmlinuz", modules_root=kdir / "modules", load_order=list(load_order),
                  package=dict(package), source="cache"), ""


def _resolve_package() -> str:
    r = run(["apt-cache", "depends", META_PACKAGE], check=False, timeout=120)
    for line in r.stdout.splitlines():
        line = line.strip()
        if line.startswith("Depends:") and "linux-image-" in line:
            return line.split(":", 1)[1].strip().strip("<>")
    raise KernelError(
        f"cannot resolve the kernel package: 'apt-cache depends {META_PACKAGE}' found nothing"
        + (f" ({r.stderr.strip().splitlines()[-1]})" if r.stderr.strip() else ""),
        fix="run 'apt-get update', or set composer.kernel to a vmlinuz",
    )


def _populate(kdir: Path, work: Path) -> Kernel:
    """Download the versioned linux-image package into `work` and fill `kdir` (a fresh directory)."""
    pkg = _resolve_package()
    dl = work / "download"
    dl.mkdir()
    r = run(["apt-get", "download", pkg], cwd=dl, check=False, timeout=1800)
    debs = sorted(dl.glob("*.deb"))
    if not r.ok or not debs:
        raise KernelError(f"'apt-get download {pkg}' failed: "
                          + (r.stderr.strip().splitlines() or ["no .deb written"])[-1],
                          fix="check network access to the Debian mirror, or set composer.kernel to a vmlinuz")
    deb = debs[0]
    fields = {}
    for key in ("Package", "Version", "Architecture"):
        fields[key] = run(["dpkg-deb", "-f", deb, key]).stdout.strip()
    root = work / "root"
    run(["dpkg", "-x", deb, root], timeout=1800)
    deb.unlink()
    kernel = from_package_root(root)
    version = fields["Version"].split(":")[-1]
    upstream, _, release = version.rpartition("-") if "-" in version else (version, "", "")
    kernel.package = {"name": fields["Package"], "version": upstream, "release": release,
                      "arch": fields["Architecture"]}
    # keep only what the test OS needs
    (kdir / "modules").mkdir(parents=True)
    shutil.copyfile(kernel.vmlinuz, kdir / "vmlinuz")
    for rel in kernel.load_order:
        dest = kdir / "modules" / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        src = kernel.modules_root / rel
        shutil.copyfile(src, dest)
    dep_text = kernel.modules_dep()
    (kdir / "modules.dep").write_text(dep_text)
    files = {"vmlinuz": sha256_file(kdir / "vmlinuz"), "modules.dep": sha256_file(kdir / "modules.dep")}
    for rel in kernel.load_order:
        files[f"modules/{rel}"] = sha256_file(kdir / "modules" / rel)
    manifest = {"schema": CACHE_SCHEMA, "kver": kernel.kver, "package": kernel.package,
                "load_order": kernel.load_order, "files": files}
    tmp = kdir / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    os.replace(tmp, kdir / MANIFEST)  # last: its presence means the cache is complete
    cached, reason = verify_cache(kdir)
    if cached is None:
        raise KernelError(f"the kernel cache just written is unusable: {reason}", where=str(kdir))
    return cached


def from_package_root(root: Path) -> Kernel:
    """A Kernel from an extracted linux-image package (dpkg -x) or a root with boot/ and lib/modules/."""
    vmlinuzes = sorted((root / "boot").glob("vmlinuz-*"))
    if not vmlinuzes:
        raise KernelError(f"no boot/vmlinuz-* in {root}")
    vmlinuz = vmlinuzes[-1]
    kver = vmlinuz.name[len("vmlinuz-"):]
    for base in (root / "lib" / "modules", root / "usr" / "lib" / "modules"):
        if (base / kver / "kernel").is_dir():
            modules_dir = base / kver
            break
    else:
        raise KernelError(f"no lib/modules/{kver}/kernel in {root}")
    return Kernel(kver=kver, vmlinuz=vmlinuz, modules_root=modules_dir,
                  load_order=resolve_modules(modules_dir), source="package")


def from_config(path: str) -> Kernel:
    """composer.kernel: a vmlinuz-KVER (modules in ../lib/modules/KVER or /lib/modules/KVER), or a
    directory holding an extracted linux-image package."""
    p = Path(os.path.expanduser(path))
    if p.is_dir():
        try:
            k = from_package_root(p)
        except KernelError as e:
            raise ConfigError(e.message, where="composer.kernel",
                              fix="point it at a vmlinuz-KVER or an extracted linux-image package") from None
        k.source = "config"
        return k
    if not p.is_file():
        raise ConfigError(f"kernel '{p}' does not exist", where="composer.kernel",
                          fix="point it at a vmlinuz-KVER, or unset it to use Debian's cached kernel")
    if not _is_bzimage(p):
        raise ConfigError(f"'{p}' is not a Linux kernel image (no bzImage header)", where="composer.kernel",
                          fix="point it at a vmlinuz-KVER file")
    if not p.name.startswith("vmlinuz-"):
        raise ConfigError(f"cannot tell the kernel version of '{p}'", where="composer.kernel",
                          fix="name the file vmlinuz-KVER, as in /boot")
    kver = p.name[len("vmlinuz-"):]
    candidates = [p.parent.parent / "lib" / "modules" / kver, p.parent.parent / "usr" / "lib" / "modules" / kver,
                  Path("/lib/modules") / kver]
    for modules_dir in candidates:
        if (modules_dir / "kernel").is_dir():
            break
    else:
        raise ConfigError(f"no modules for kernel {kver} (looked in {', '.join(map(str, candidates))})",
                          where="composer.kernel", fix="install the matching modules beside it")
    return Kernel(kver=kver, vmlinuz=p, modules_root=modules_dir, load_order=resolve_modules(modules_dir),
                  package={"name": f"linux-image-{kver}", "version": kver, "release": "", "arch": "amd64"},
                  source="config")


def ensure_kernel(kernel_path: str = "", cache: str = "") -> Kernel:
    """The configured kernel, or Debian's from the cache (downloaded and cached on first use).

    A partial or corrupt cache is rebuilt (Kernel.notes says why); a failure to rebuild raises one
    KernelError naming the cache and the fix.
    """
    if kernel_path:
        return from_config(kernel_path)
    base = cache_dir(cache)
    kdir = base / "kernel"
    try:
        with _locked(base):
            cached, reason = verify_cache(kdir)
            if cached is not None:
                return cached
            notes = [] if reason == "no cache" else [f"kernel cache {kdir} was unusable ({reason}): rebuilt it"]
            work = Path(tempfile.mkdtemp(prefix=".kernel-build-", dir=base))
            try:
                fresh = work / "kernel"
                fresh.mkdir()
                _populate(fresh, work)
                if kdir.exists():
                    trash = base / f".kernel-old-{os.getpid()}"
                    os.replace(kdir, trash)
                    shutil.rmtree(trash, ignore_errors=True)
                os.replace(fresh, kdir)
            finally:
                shutil.rmtree(work, ignore_errors=True)
            result, reason = verify_cache(kdir)
            if result is None:
                raise KernelError(f"kernel cache is unusable after rebuilding: {reason}", where=str(kdir))
            result.notes = notes
            return result
    except OSError as e:
        raise KernelError(f"cannot write the kernel cache: {e.strerror}", where=str(e.filename or base),
                          fix="set composer.cache_dir to a writable directory") from None


def extract_vmlinux(vmlinuz: Path, dest: Path) -> Path:
    """Write the uncompressed kernel (an ELF with a PVH entry) inside a bzImage to `dest`.

    qemu -kernel boots it directly (PVH), skipping the in-guest xz decompression that costs ~4.5 s
    under TCG. Written to a temp name and renamed; an existing dest is reused.
    """
    if dest.is_file():
        return dest
    data = vmlinuz.read_bytes()
    start = data.find(b"\xfd7zXZ\x00")
    if start < 0:
        raise KernelError(f"no xz-compressed payload in {vmlinuz}", fix="boot the bzImage itself")
    try:
        elf = lzma.LZMADecompressor().decompress(data[start:])
    except lzma.LZMAError as e:
        raise KernelError(f"cannot decompress the kernel payload of {vmlinuz}: {e}") from None
    if elf[:4] != b"\x7fELF":
        raise KernelError(f"the payload of {vmlinuz} is not an ELF kernel")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    tmp.write_bytes(elf)
    os.replace(tmp, dest)
    return dest
