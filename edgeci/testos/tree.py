"""Build the test OS tree (what gets committed) from a blueprint and its checks file.

Layout and semantics: the edgeci.testos docstring. Everything in the tree is owned by root; the
blueprint fields this busybox OS cannot honour are returned as warnings that name them (never
silently dropped). A blueprint the tree cannot be built from raises BlueprintError.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from edgeci.checks import ChecksFile, render_scripts
from edgeci.errors import BlueprintError
from edgeci.testos.kernel import Kernel
from edgeci.testos.scripts import TESTOS_INIT

OS_NAME = "edgeci test OS"
OS_ID = "edgeci-testos"
# customizations the tree honours; every other one present in a blueprint is warned about
HONOURED = {"hostname", "user", "group", "services", "files", "directories", "timezone", "locale"}
BASE_GROUPS = [("root", 0), ("bin", 1), ("daemon", 2), ("sys", 3), ("adm", 4), ("tty", 5), ("disk", 6),
               ("wheel", 10), ("utmp", 22), ("users", 100), ("nobody", 65534)]
BASE_USERS = [("root", 0, 0, "root", "/var/roothome", "/bin/sh"),
              ("nobody", 65534, 65534, "Kernel Overflow User", "/", "/sbin/nologin")]
HASH_RE = re.compile(r"^\$[0-9a-z]+\$")


@dataclass
class TreeResult:
    root: Path
    kver: str
    warnings: list[str] = field(default_factory=list)


def _write(path: Path, data: str | bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or path.exists():
        path.unlink()
    if isinstance(data, str):
        data = data.encode()
    path.write_bytes(data)
    os.chmod(path, mode)


def _symlink(path: Path, target: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or path.exists():
        path.unlink()
    os.symlink(target, path)


def _names(items: Any, key: str = "name") -> list[str]:
    out = []
    for item in items if isinstance(items, list) else []:
        if isinstance(item, Mapping):
            value = item.get(key)
            if key == "name" and item.get("version") not in (None, "", "*"):
                value = f"{value}-{item['version']}"
            out.append(str(value))
        else:
            out.append(str(item))
    return out


def unhonoured(data: Mapping[str, Any]) -> list[str]:
    """One warning per blueprint field the local composer's test OS cannot honour."""
    warnings = []
    for key, label, sub in (("packages", "packages", "name"), ("modules", "modules", "name"),
                            ("groups", "groups", "name"), ("enabled_modules", "enabled_modules", "name"),
                            ("containers", "containers", "source")):
        names = _names(data.get(key), sub)
        if names:
            warnings.append(f"{label} not installed by the local composer (its test OS is busybox): "
                            + ", ".join(names))
    cust = data.get("customizations") if isinstance(data.get("customizations"), Mapping) else {}
    assert isinstance(cust, Mapping)
    for key in sorted(cust):
        if key in HONOURED:
            continue
        if key == "repositories":
            ids = _names(cust[key], "id")
            warnings.append("customizations.repositories not used by the local composer: " + ", ".join(ids))
        else:
            warnings.append(f"customizations.{key} not honoured by the local composer")
    tz = cust.get("timezone")
    if isinstance(tz, Mapping) and tz.get("ntpservers"):
        warnings.append("customizations.timezone.ntpservers not honoured by the local composer (no NTP client)")
    services = cust.get("services")
    if isinstance(services, Mapping) and services.get("masked"):
        warnings.append("customizations.services.masked not honoured by the local composer: "
                        + ", ".join(map(str, services["masked"])))
    for i, user in enumerate(cust.get("user") or []):
        if isinstance(user, Mapping) and user.get("key"):
            warnings.append(f"customizations.user[{i}].key ({user.get('name')}) not honoured by the local "
                            "composer (home directories live in /var, outside the commit)")
    for section in ("files", "directories"):
        for i, item in enumerate(cust.get(section) or []):
            if not isinstance(item, Mapping):
                continue
            for owner in ("user", "group"):
                if item.get(owner) not in (None, "root", 0, "0"):
                    warnings.append(f"customizations.{section}[{i}].{owner} ({item.get(owner)} for "
                                    f"{item.get('path')}) not honoured by the local composer: owned by root")
            path = str(item.get("path", ""))
            if path and not (path == "/etc" or path.startswith(("/etc/", "/usr/"))):
                warnings.append(f"customizations.{section}[{i}].path {path} not honoured by the local composer "
                                "(only /etc and /usr are part of an ostree commit)")
    return warnings


def _tree_path(root: Path, path: str, what: str) -> Path | None:
    """/etc/x → usr/etc/x, /usr/x → usr/x; None for paths the commit cannot carry."""
    p = PurePosixPath(path)
    if not p.is_absolute() or ".." in p.parts:
        raise BlueprintError(f"{what} must be an absolute path without '..', not '{path}'")
    parts = p.parts[1:]
    if parts and parts[0] == "etc":
        return root.joinpath("usr", *parts)
    if parts and parts[0] == "usr":
        return root.joinpath(*parts)
    return None


def _mode(value: Any, default: int, what: str) -> int:
    if value is None or value == "":
        return default
    try:
        mode = value if isinstance(value, int) else int(str(value), 8)
    except ValueError:
        raise BlueprintError(f"{what} must be an octal mode like \"0644\", not {value!r}") from None
    if not 0 <= mode <= 0o7777:
        raise BlueprintError(f"{what} must be an octal mode like \"0644\", not {value!r}")
    return mode


def _hash_password(password: str) -> str | None:
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import crypt
        return crypt.crypt(password, crypt.mksalt(crypt.METHOD_SHA512))
    except (ImportError, OSError):
        return None


def _accounts(cust: Mapping[str, Any], warnings: list[str]) -> tuple[str, str, str, str]:
    """passwd, group, shadow, gshadow texts: base accounts plus [[customizations.group]]/[[…user]]."""
    groups: dict[str, tuple[int, list[str]]] = {n: (g, []) for n, g in BASE_GROUPS}
    users: list[tuple[str, int, int, str, str, str, str]] = [(n, u, g, c, h, s, "*") for n, u, g, c, h, s in BASE_USERS]
    used_gids = {g for g, _ in groups.values()}
    for i, grp in enumerate(cust.get("group") or []):
        if not isinstance(grp, Mapping) or not grp.get("name"):
            raise BlueprintError(f"customizations.group[{i}] has no name")
        name = str(grp["name"])
        gid = grp.get("gid")
        if gid is None:
            gid = next(n for n in range(1000, 60000) if n not in used_gids)
        groups[name] = (int(gid), groups.get(name, (0, []))[1])
        used_gids.add(int(gid))
    used_uids = {u[1] for u in users}
    extra_members: list[tuple[str, str]] = []
    for i, user in enumerate(cust.get("user") or []):
        if not isinstance(user, Mapping) or not user.get("name"):
            raise BlueprintError(f"customizations.user[{i}] has no name")
        name = str(user["name"])
        uid = int(user["uid"]) if user.get("uid") is not None else next(
            n for n in range(1000, 60000) if n not in used_uids)
        used_uids.add(uid)
        if user.get("gid") is not None:
            gid = int(user["gid"])
        elif name in groups:
            gid = groups[name][0]
        else:
            gid = uid if uid not in used_gids else next(n for n in range(1000, 60000) if n not in used_gids)
            groups[name] = (gid, [])
            used_gids.add(gid)
        password = str(user.get("password") or "")
        if not password:
            hashed = "!"  # locked, as useradd leaves it
        elif HASH_RE.match(password):
            hashed = password
        else:
            hashed = _hash_password(password) or "!"
            if hashed == "!":
                warnings.append(f"customizations.user[{i}].password ({name}) could not be hashed here: account locked")
        home = str(user.get("home") or f"/var/home/{name}")
        shell = str(user.get("shell") or "/bin/sh")
        users = [u for u in users if u[0] != name]
        users.append((name, uid, gid, str(user.get("description") or ""), home, shell, hashed))
        for g in user.get("groups") or []:
            extra_members.append((name, str(g)))
    for member, g in extra_members:
        if g not in groups:
            raise BlueprintError(f"user '{member}' is in group '{g}', which does not exist",
                                 fix=f"add [[customizations.group]] name = \"{g}\"")
        groups[g][1].append(member)
    passwd = "".join(f"{n}:x:{u}:{g}:{c}:{h}:{s}\n" for n, u, g, c, h, s, _ in users)
    shadow = "".join(f"{n}:{p}:19000:0:99999:7:::\n" for n, _u, _g, _c, _h, _s, p in users)
    ordered = sorted(groups.items(), key=lambda kv: kv[1][0])
    group = "".join(f"{n}:x:{g}:{','.join(m)}\n" for n, (g, m) in ordered)
    gshadow = "".join(f"{n}:!::{','.join(m)}\n" for n, (g, m) in ordered)
    return passwd, group, shadow, gshadow


def os_release(name: str, version: str) -> str:
    return (f'NAME="{OS_NAME}"\nID={OS_ID}\nVERSION={version}\nVERSION_ID={version}\n'
            f"IMAGE_ID={name}\nIMAGE_VERSION={version}\n"
            f'PRETTY_NAME="{OS_NAME} {name} {version}"\n')


def build_tree(
    root: Path,
    *,
    name: str,
    version: str,
    data: Mapping[str, Any],
    checks: ChecksFile | None,
    kernel: Kernel,
    initramfs: bytes,
    busybox: Path,
    applets: list[str],
) -> TreeResult:
    """Write the test OS tree into `root` (an empty or missing directory)."""
    result = TreeResult(root=root, kver=kernel.kver, warnings=unhonoured(data))
    root.mkdir(parents=True, exist_ok=True)
    for d in ("usr/bin", "usr/sbin", "usr/lib", "usr/etc", "usr/share", "dev", "proc", "sys", "run", "tmp", "var",
              "sysroot", "boot", "mnt"):
        (root / d).mkdir(parents=True, exist_ok=True)
    os.chmod(root / "tmp", 0o1777)
    for link, target in (("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib"), ("lib64", "usr/lib"),
                         ("ostree", "sysroot/ostree"), ("home", "var/home"), ("root", "var/roothome"),
                         ("opt", "var/opt"), ("srv", "var/srv")):
        _symlink(root / link, target)

    # kernel + initramfs where ostree admin deploy looks for them
    mods = root / "usr" / "lib" / "modules" / kernel.kver
    mods.mkdir(parents=True)
    shutil.copyfile(kernel.vmlinuz, mods / "vmlinuz")
    os.chmod(mods / "vmlinuz", 0o644)
    _write(mods / "initramfs.img", initramfs, 0o644)

    # busybox and its applets; our init replaces busybox's
    shutil.copyfile(busybox, root / "usr" / "bin" / "busybox")
    os.chmod(root / "usr" / "bin" / "busybox", 0o755)
    for full in applets:
        parts = full.strip("/").split("/")
        applet = parts[-1]
        if applet in ("busybox", "init", "linuxrc") or not applet:
            continue
        in_sbin = "sbin" in parts[:-1]
        applet_link = root / "usr" / ("sbin" if in_sbin else "bin") / applet
        if not applet_link.is_symlink() and not applet_link.exists():
            os.symlink("../bin/busybox" if in_sbin else "busybox", applet_link)
    _write(root / "usr" / "sbin" / "init", TESTOS_INIT, 0o755)

    # identity
    _write(root / "usr" / "lib" / "os-release", os_release(name, version))
    _symlink(root / "usr" / "etc" / "os-release", "../lib/os-release")
    etc = root / "usr" / "etc"
    cust_any = data.get("customizations")
    cust: Mapping[str, Any] = cust_any if isinstance(cust_any, Mapping) else {}
    passwd, group, shadow, gshadow = _accounts(cust, result.warnings)
    _write(etc / "passwd", passwd)
    _write(etc / "group", group)
    _write(etc / "shadow", shadow, 0o000)
    _write(etc / "gshadow", gshadow, 0o000)
    _write(etc / "hostname", f"{cust.get('hostname') or 'localhost'}\n")
    _write(etc / "fstab", "")
    _write(etc / "machine-id", "")
    tz = cust.get("timezone")
    zone = tz.get("timezone") if isinstance(tz, Mapping) else None
    zone = str(zone or "UTC")
    _write(etc / "timezone", f"{zone}\n")
    _symlink(etc / "localtime", f"../usr/share/zoneinfo/{zone}")
    locale = cust.get("locale")
    if isinstance(locale, Mapping):
        languages = locale.get("languages") or []
        if languages:
            _write(etc / "locale.conf", f"LANG={languages[0]}\n")
        if locale.get("keyboard"):
            _write(etc / "vconsole.conf", f"KEYMAP={locale['keyboard']}\n")

    services = cust.get("services")
    if isinstance(services, Mapping):
        disabled = {str(s) for s in services.get("disabled") or []}
        for svc in services.get("enabled") or []:
            unit = str(svc) if "." in str(svc) else f"{svc}.service"
            if str(svc) in disabled or unit in disabled:
                continue
            if "/" in unit:
                raise BlueprintError(f"customizations.services.enabled: '{svc}' is not a unit name")
            wants = "timers.target.wants" if unit.endswith(".timer") else (
                "sockets.target.wants" if unit.endswith(".socket") else "multi-user.target.wants")
            _symlink(etc / "systemd" / "system" / wants / unit, f"/usr/lib/systemd/system/{unit}")

    # health checks
    for d in ("required.d", "wanted.d"):
        (etc / "greenboot" / "check" / d).mkdir(parents=True, exist_ok=True)
    if checks is not None:
        for rel, text in render_scripts(checks, version).items():
            _write(etc / "greenboot" / "check" / rel, text, 0o755)

    apply_files(root, cust)
    return result


def apply_files(root: Path, cust: Mapping[str, Any]) -> None:
    """[[customizations.directories]] then [[customizations.files]] (files may land in those directories),
    into an ostree-layout tree (/etc → usr/etc); paths outside /etc and /usr are skipped (unhonoured() warns)."""
    for i, item in enumerate(cust.get("directories") or []):
        if not isinstance(item, Mapping) or not item.get("path"):
            raise BlueprintError(f"customizations.directories[{i}] has no path")
        dir_target = _tree_path(root, str(item["path"]), f"customizations.directories[{i}].path")
        if dir_target is None:
            continue
        mode = _mode(item.get("mode"), 0o755, f"customizations.directories[{i}].mode")
        if dir_target.exists() and not dir_target.is_dir():
            raise BlueprintError(f"customizations.directories[{i}].path {item['path']} is already a file")
        if not dir_target.parent.exists() and item.get("ensure_parents") is False:
            raise BlueprintError(f"customizations.directories[{i}].path {item['path']}: its parent does not exist",
                                 fix="set ensure_parents = true")
        dir_target.mkdir(parents=True, exist_ok=True)
        os.chmod(dir_target, mode)
    for i, item in enumerate(cust.get("files") or []):
        if not isinstance(item, Mapping) or not item.get("path"):
            raise BlueprintError(f"customizations.files[{i}] has no path")
        file_target = _tree_path(root, str(item["path"]), f"customizations.files[{i}].path")
        if file_target is None:
            continue
        if file_target.is_dir() and not file_target.is_symlink():
            raise BlueprintError(f"customizations.files[{i}].path {item['path']} is a directory in the tree")
        mode = _mode(item.get("mode"), 0o644, f"customizations.files[{i}].mode")
        _write(file_target, str(item.get("data", "")), mode)


def tree_size(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            st = os.lstat(os.path.join(dirpath, f))
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total
