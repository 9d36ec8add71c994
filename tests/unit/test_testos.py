"""edgeci.testos: the cpio writer, the kernel cache and module resolution, the tree builder."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from edgeci.errors import BlueprintError, ConfigError
from edgeci.testos import applets, find_busybox, initramfs, is_static
from edgeci.testos.kernel import (
    Kernel,
    extract_vmlinux,
    from_config,
    modinfo,
    resolve_modules,
    verify_cache,
)
from edgeci.testos.tree import build_tree, unhonoured
from edgeci.tools.run import run

# -- cpio ---------------------------------------------------------------------------------------------


def test_cpio_round_trip_and_busybox_reads_it(tmp_path: Path) -> None:
    entries = [
        initramfs.Entry("bin", stat.S_IFDIR | 0o755),
        initramfs.Entry("bin/hello", stat.S_IFREG | 0o755, b"#!/bin/sh\necho hi\n"),
        initramfs.Entry("bin/odd", stat.S_IFREG | 0o644, b"x" * 5),  # forces padding
        initramfs.Entry("bin/sh", stat.S_IFLNK | 0o777, b"busybox"),
        initramfs.Entry("dev", stat.S_IFDIR | 0o755),
        initramfs.Entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)),
    ]
    raw = initramfs.write_cpio(entries, compress=False)
    assert raw.startswith(b"070701") and len(raw) % 4 == 0
    back = initramfs.read_cpio(raw)
    assert [(e.name, e.mode, e.data, e.rdev) for e in back] == [(e.name, e.mode, e.data, e.rdev) for e in entries]
    archive = tmp_path / "a.cpio"
    archive.write_bytes(raw)
    listing = run(["sh", "-c", f"busybox cpio -t < {archive}"]).stdout.split()
    assert listing == [e.name for e in entries]
    assert initramfs.read_cpio(initramfs.write_cpio(entries)) == back  # gzip'd reads the same


def test_initramfs_holds_init_busybox_console_and_modules_in_order(kernel_cache: Kernel) -> None:
    bb = find_busybox()
    names = [a.rsplit("/", 1)[-1] for a in applets(bb)]
    image = initramfs.build(kernel_cache, bb, names)
    assert image == initramfs.build(kernel_cache, bb, names)  # reproducible
    entries = {e.name: e for e in initramfs.read_cpio(image)}
    assert entries["init"].mode == stat.S_IFREG | 0o755 and entries["init"].data.startswith(b"#!/bin/sh")
    assert entries["dev/console"].rdev == (5, 1) and stat.S_ISCHR(entries["dev/console"].mode)
    assert entries["bin/switch_root"].data == b"busybox" and "bin/init" not in entries
    order = entries["etc/edgeci/modules"].data.decode().split()
    base = [p.rsplit("/", 1)[-1] for p in order]
    assert base.index("virtio_ring.ko") < base.index("virtio_blk.ko")
    assert base.index("jbd2.ko") < base.index("ext4.ko") and base.index("crc16.ko") < base.index("ext4.ko")
    assert "crc32c_generic.ko" in base
    for p in order:
        assert p.lstrip("/") in entries
    assert f"lib/modules/{kernel_cache.kver}/modules.dep" in entries


# -- kernel ---------------------------------------------------------------------------------------------

def test_modinfo_and_resolution(kernel_cache: Kernel) -> None:
    ext4 = next(p for p in kernel_cache.load_order if p.endswith("/ext4.ko"))
    info = modinfo(kernel_cache.modules_root / ext4)
    assert set(info["depends"][0].split(",")) == {"jbd2", "mbcache", "crc16"}
    assert any("crc32c" in s for s in info.get("softdep", []))
    assert resolve_modules(kernel_cache.modules_root) == kernel_cache.load_order
    dep = kernel_cache.modules_dep()
    assert f"{ext4}: " in dep and "jbd2.ko" in dep.split(f"{ext4}: ")[1].splitlines()[0]


def test_modinfo_rejects_non_elf(tmp_path: Path) -> None:
    from edgeci.testos.kernel import KernelError

    p = tmp_path / "x.ko"
    p.write_bytes(b"not an elf" * 10)
    with pytest.raises(KernelError, match="not a 64-bit"):
        modinfo(p)


def _copy_cache(kernel: Kernel, dest: Path) -> Path:
    import shutil

    shutil.copytree(kernel.vmlinuz.parent, dest)
    return dest


def test_verify_cache_detects_partial_and_corrupt(kernel_cache: Kernel, tmp_path: Path) -> None:
    kdir = _copy_cache(kernel_cache, tmp_path / "kernel")
    ok, reason = verify_cache(kdir)
    assert ok is not None and reason == "" and ok.kver == kernel_cache.kver
    module = kdir / "modules" / kernel_cache.load_order[0]
    module.write_bytes(module.read_bytes()[:-1] + b"\0")
    assert verify_cache(kdir) == (None, f"modules/{kernel_cache.load_order[0]} does not match its sha256")
    module.unlink()
    assert verify_cache(kdir) == (None, f"modules/{kernel_cache.load_order[0]} is missing")
    manifest = json.loads((kdir / "manifest.json").read_text())
    (kdir / "manifest.json").write_text("{")
    assert verify_cache(kdir)[1].startswith("manifest.json is unreadable")
    manifest["schema"] = 99
    (kdir / "manifest.json").write_text(json.dumps(manifest))
    assert verify_cache(kdir)[1] == "cache schema 99 is not 1"
    (kdir / "manifest.json").unlink()
    assert "missing" in verify_cache(kdir)[1]
    assert verify_cache(tmp_path / "none") == (None, "no cache")


def test_configured_kernel(kernel_cache: Kernel, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        from_config(str(tmp_path / "nope"))
    text = tmp_path / "vmlinuz-1"
    text.write_text("hello")
    with pytest.raises(ConfigError, match="not a Linux kernel image"):
        from_config(str(text))
    # an extracted package layout: boot/vmlinuz-KVER + lib/modules/KVER/kernel/…
    root = tmp_path / "pkg"
    (root / "boot").mkdir(parents=True)
    os.link(kernel_cache.vmlinuz, root / "boot" / f"vmlinuz-{kernel_cache.kver}")
    mods = root / "lib" / "modules" / kernel_cache.kver
    for rel in kernel_cache.load_order:
        (mods / rel).parent.mkdir(parents=True, exist_ok=True)
        os.link(kernel_cache.modules_root / rel, mods / rel)
    k = from_config(str(root / "boot" / f"vmlinuz-{kernel_cache.kver}"))
    assert k.source == "config" and k.load_order == kernel_cache.load_order
    assert from_config(str(root)).kver == kernel_cache.kver


def test_extract_vmlinux_gives_the_elf_kernel(kernel_cache: Kernel, tmp_path: Path) -> None:
    out = extract_vmlinux(kernel_cache.vmlinuz, tmp_path / "vmlinux")
    assert out.read_bytes()[:4] == b"\x7fELF" and out.stat().st_size > kernel_cache.vmlinuz.stat().st_size


def test_busybox_is_static() -> None:
    assert is_static(find_busybox())
    assert not is_static(Path(run(["sh", "-c", "command -v ostree"]).stdout.strip()))


# -- tree -------------------------------------------------------------------------------------------------

BLUEPRINT = {
    "name": "gw", "version": "2.0.0",
    "packages": [{"name": "podman", "version": "*"}, {"name": "vim", "version": "9.0"}],
    "modules": [{"name": "nodejs", "version": "18"}],
    "groups": [{"name": "core"}],
    "containers": [{"source": "quay.io/x/y:latest"}],
    "customizations": {
        "hostname": "gw1",
        "user": [{"name": "core", "password": "$6$salt$hash", "groups": ["wheel", "ops"], "key": "ssh-ed25519 AAA"},
                 {"name": "svc", "uid": 2001, "gid": 3000}],
        "group": [{"name": "ops", "gid": 3000}],
        "services": {"enabled": ["sshd", "podman-auto-update.timer", "off"], "disabled": ["off"]},
        "timezone": {"timezone": "Europe/Berlin", "ntpservers": ["pool.ntp.org"]},
        "locale": {"languages": ["de_DE.UTF-8"], "keyboard": "de"},
        "directories": [{"path": "/etc/app", "mode": "0750"}, {"path": "/var/lib/app"}],
        "files": [{"path": "/etc/app/app.conf", "data": "x=1\n", "mode": "0600", "user": "core"},
                  {"path": "/usr/local/bin/tool", "data": "#!/bin/sh\n", "mode": "0755"}],
        "firewall": {"ports": ["22:tcp"]},
        "repositories": [{"id": "extra", "baseurls": ["http://x"]}],
    },
}


def test_unhonoured_fields_are_named() -> None:
    w = "\n".join(unhonoured(BLUEPRINT))
    for text in ("packages not installed", "podman", "vim-9.0", "modules not installed by the local composer",
                 "nodejs-18", "groups not installed", "containers not installed", "quay.io/x/y:latest",
                 "customizations.firewall not honoured", "customizations.repositories not used by the local "
                 "composer: extra", "ntpservers", "customizations.user[0].key (core)",
                 "customizations.files[0].user (core for /etc/app/app.conf)",
                 "customizations.directories[1].path /var/lib/app not honoured"):
        assert text in w, text
    assert unhonoured({"name": "x", "customizations": {"hostname": "h"}}) == []


def test_build_tree(kernel_cache: Kernel, tmp_path: Path) -> None:
    bb = find_busybox()
    root = tmp_path / "tree"
    result = build_tree(root, name="gw", version="2.0.0", data=BLUEPRINT, checks=None, kernel=kernel_cache,
                        initramfs=b"img", busybox=bb, applets=applets(bb))
    assert result.warnings == unhonoured(BLUEPRINT)
    assert not (root / "etc").exists() and os.readlink(root / "bin") == "usr/bin"
    assert (root / "usr" / "lib" / "modules" / kernel_cache.kver / "vmlinuz").stat().st_size > 1_000_000
    assert (root / "usr" / "lib" / "modules" / kernel_cache.kver / "initramfs.img").read_bytes() == b"img"
    assert os.access(root / "usr" / "sbin" / "init", os.X_OK)
    assert os.readlink(root / "usr" / "sbin" / "poweroff") == "../bin/busybox"
    assert os.readlink(root / "usr" / "bin" / "sh") == "busybox"
    etc = root / "usr" / "etc"
    assert "VERSION=2.0.0\n" in (root / "usr" / "lib" / "os-release").read_text()
    assert "IMAGE_VERSION=2.0.0\n" in (root / "usr" / "lib" / "os-release").read_text()
    assert os.readlink(etc / "os-release") == "../lib/os-release"
    passwd = (etc / "passwd").read_text()
    assert "core:x:1000:1000::/var/home/core:/bin/sh\n" in passwd and "svc:x:2001:3000:" in passwd
    assert "core:$6$salt$hash:" in (etc / "shadow").read_text()
    group = (etc / "group").read_text()
    assert "wheel:x:10:core\n" in group and "ops:x:3000:core\n" in group and "core:x:1000:\n" in group
    assert (etc / "hostname").read_text() == "gw1\n"
    assert os.readlink(etc / "localtime") == "../usr/share/zoneinfo/Europe/Berlin"
    assert (etc / "locale.conf").read_text() == "LANG=de_DE.UTF-8\n"
    wants = etc / "systemd" / "system"
    assert os.readlink(wants / "multi-user.target.wants" / "sshd.service") == "/usr/lib/systemd/system/sshd.service"
    assert (wants / "timers.target.wants" / "podman-auto-update.timer").is_symlink()
    assert not (wants / "multi-user.target.wants" / "off.service").is_symlink()
    assert stat.S_IMODE((etc / "app").stat().st_mode) == 0o750
    assert stat.S_IMODE((etc / "app" / "app.conf").stat().st_mode) == 0o600
    assert (root / "usr" / "local" / "bin" / "tool").read_text() == "#!/bin/sh\n"
    assert (etc / "greenboot" / "check" / "required.d").is_dir()


@pytest.mark.parametrize("custom, message", [
    ({"user": [{"name": "a", "groups": ["nope"]}]}, "group 'nope', which does not exist"),
    ({"files": [{"path": "etc/x", "data": ""}]}, "must be an absolute path"),
    ({"files": [{"path": "/etc/x", "data": "", "mode": "rw"}]}, "octal mode"),
    ({"directories": [{"path": "/etc/hostname"}]}, "is already a file"),
])
def test_tree_errors_are_blueprint_errors(kernel_cache: Kernel, tmp_path: Path, custom: dict, message: str) -> None:
    bb = find_busybox()
    with pytest.raises(BlueprintError, match=message):
        build_tree(tmp_path / "t", name="x", version="1", data={"customizations": custom}, checks=None,
                   kernel=kernel_cache, initramfs=b"", busybox=bb, applets=[])
