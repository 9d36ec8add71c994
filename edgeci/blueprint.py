"""Blueprints: strict TOML parsing (tomllib) into a Blueprint value.

Lint rules live below load(); every problem names file:line and the key.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeci.errors import BlueprintError
from edgeci.version import compare_versions, next_patch, parse_semver

if TYPE_CHECKING:
    from edgeci.config import Config


@dataclass
class Blueprint:
    name: str
    version: str
    path: Path
    text: str
    sha256: str
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def customizations(self) -> dict[str, Any]:
        c = self.data.get("customizations")
        return c if isinstance(c, dict) else {}

    @property
    def checks_path(self) -> Path:
        """blueprints/NAME.checks.yaml beside the TOML (may not exist)."""
        return self.path.with_name(f"{self.path.stem}.checks.yaml")


def _toml_line(e: tomllib.TOMLDecodeError) -> int | None:
    # tomllib messages end with "(at line L, column C)"
    msg = str(e)
    if "(at line " in msg:
        try:
            return int(msg.rsplit("(at line ", 1)[1].split(",")[0])
        except ValueError:
            return None
    return None


def parse(text: str, path: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse TOML text strictly; BlueprintError with file:line on a syntax error."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        line = _toml_line(e)
        if line is None and "(at end of document)" in str(e):
            line = text.rstrip().count("\n") + 1  # the document stopped short: point at its last line
        where = f"{path}:{line}" if line else str(path)
        reason = str(e).split(" (at line ")[0].split(" (at end of document)")[0]
        raise BlueprintError(f"invalid TOML: {reason}", where=where, fix="fix the TOML syntax") from None
    except RecursionError:  # tomllib recurses per nesting level: a few hundred nested arrays exhaust the stack
        raise BlueprintError("invalid TOML: arrays or tables nested too deeply", where=f"{path}:1",
                             fix="flatten the nesting") from None


def load(path: str | os.PathLike[str], *, raw: bytes | None = None) -> Blueprint:
    """Read and parse a blueprint file. Only syntax and the name/version basics are checked here."""
    p = Path(path)
    try:
        raw = p.read_bytes() if raw is None else raw
    except FileNotFoundError:
        raise BlueprintError("blueprint file not found", where=str(p)) from None
    except OSError as e:
        raise BlueprintError(f"cannot read blueprint: {e.strerror}", where=str(p)) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BlueprintError(f"blueprint is not UTF-8 (byte {e.start})", where=str(p)) from None
    data = parse(text, p)
    name = data.get("name")
    version = data.get("version", "")
    return Blueprint(
        name=name if isinstance(name, str) else "",
        version=version if isinstance(version, str) else "",
        path=p,
        text=text,
        sha256=hashlib.sha256(raw).hexdigest(),
        data=data,
    )


# =============================================================================================
# Lint: strict schema, image-type support, secrets, versions. Findings are results, not errors.
# =============================================================================================

KeyPath = tuple[str | int, ...]

ERROR = "error"
WARNING = "warning"

# Rule name → what passing means. Every rule is one JUnit testcase per blueprint.
RULES: dict[str, str] = {
    "syntax": "the file is UTF-8 TOML",
    "unknown-key": "every key is a known blueprint key",
    "type": "every value has the right type and shape; required keys are present",
    "name": "name is present and matches ^[A-Za-z0-9._-]+$",
    "version": "version is present and is semver (MAJOR.MINOR.PATCH)",
    "duplicate-package": "no package, module, group or container is listed twice",
    "image-type": "only options the configured image type accepts",
    "installation-device": "edge-simplified-installer blueprints set customizations.installation_device",
    "plaintext-password": "user passwords are crypt hashes, never clear text",
    "version-bump": "a blueprint changed since the base revision has a strictly higher version",
    "production-version": "the version is higher than the version in production",
    "template": "${NAME} placeholders are declared, in values that may vary, and render into valid values",
    "checks": "the checks file (NAME.checks.yaml) parses strictly: known kinds, unique names, valid paths and names",
    "location": "the blueprint and its checks file are regular files inside the repository",
}
# Rules about a value that a ${NAME} placeholder stands in for: judged on the rendered value, not the template.
VALUE_RULES = ("plaintext-password", "type")

NAME_RE = re.compile(r"^[A-Za-z0-9._-]+$")
MODE_RE = re.compile(r"^0?[0-7]{3}$")  # osbuild's validateModeString


@dataclass(frozen=True)
class Finding:
    """One lint result. `where` is always "file:line"; `key` the dotted key path ("" for the file)."""

    rule: str
    severity: str  # "error" | "warning"
    where: str
    message: str
    key: str = ""

    def as_dict(self) -> dict[str, str]:
        """The record's lint.findings entry (exact keys: rule, severity, where, message)."""
        return {"rule": self.rule, "severity": self.severity, "where": self.where, "message": self.message}

    def line(self) -> str:
        return f"{self.where}: {self.severity}: [{self.rule}] {self.message}"

    @property
    def lineno(self) -> int:
        tail = self.where.rsplit(":", 1)[-1]
        return int(tail) if tail.isdigit() else 0


# -- schema ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scalar:
    types: tuple[type, ...]
    label: str


@dataclass(frozen=True)
class ListOf:
    item: Spec


@dataclass(frozen=True)
class Table:
    fields: Mapping[str, Spec] = field(default_factory=dict)
    required: tuple[str, ...] = ()
    open: bool = False  # contents not checked (options no edge image type accepts: flagged as a whole)


Spec = Scalar | ListOf | Table

STR = Scalar((str,), "a string")
INT = Scalar((int,), "an integer")
BOOL = Scalar((bool,), "true or false")
STR_OR_INT = Scalar((str, int), "a string or an integer")
SIZE = Scalar((str, int), 'a size (bytes, or a string such as "20 GiB")')
STRS = ListOf(STR)


def _aot(required: tuple[str, ...] = (), **fields: Spec) -> ListOf:
    """An array of tables ([[x]])."""
    return ListOf(Table(_keys(fields), required))


def _tbl(required: tuple[str, ...] = (), **fields: Spec) -> Table:
    return Table(_keys(fields), required)


def _keys(fields: Mapping[str, Spec]) -> dict[str, Spec]:
    # TOML keys with dashes are spelled with underscores+"__" here: tls__verify → tls-verify.
    return {k.replace("__", "-"): v for k, v in fields.items()}


_FS_TYPED = {"mountpoint": STR, "label": STR, "fs_type": STR}

# Every key osbuild-composer's blueprint format knows (osbuild/blueprint pkg/blueprint, and the
# blueprint reference at osbuild.org/docs/user-guide/blueprint-reference). Unknown keys are findings.
CUSTOMIZATIONS = _tbl(
    hostname=STR,
    kernel=_tbl(name=STR, append=STR),
    sshkey=_aot(("user", "key"), user=STR, key=STR),
    user=_aot(("name",), name=STR, description=STR, password=STR, key=STR, home=STR, shell=STR, groups=STRS,
              uid=INT, gid=INT, expiredate=INT, force_password_reset=BOOL),
    group=_aot(("name",), name=STR, gid=INT),
    timezone=_tbl(timezone=STR, ntpservers=STRS),
    locale=_tbl(languages=STRS, keyboard=STR),
    firewall=_tbl(ports=STRS, services=_tbl(enabled=STRS, disabled=STRS),
                  zones=_aot((), name=STR, sources=STRS)),
    services=_tbl(enabled=STRS, disabled=STRS, masked=STRS),
    filesystem=_aot(("mountpoint",), mountpoint=STR, minsize=SIZE, size=SIZE),
    disk=_tbl(
        type=STR, minsize=SIZE, start_offset=SIZE, sector_size=INT,
        partitions=_aot(
            (), type=STR, minsize=SIZE, part_type=STR, part_label=STR, part_uuid=STR, name=STR, **_FS_TYPED,
            logical_volumes=_aot((), name=STR, minsize=SIZE, **_FS_TYPED),
            subvolumes=_aot((), name=STR, mountpoint=STR),
        ),
    ),
    installation_device=STR,
    partitioning_mode=STR,
    fdo=_tbl(manufacturing_server_url=STR, diun_pub_key_insecure=Scalar((str, bool), "a string or true/false"),
             diun_pub_key_hash=STR, diun_pub_key_root_certs=STR, di_mfg_string_type_mac_iface=STR),
    ignition=_tbl(embedded=_tbl(config=STR), firstboot=_tbl(url=STR, empty=BOOL)),
    directories=_aot(("path",), path=STR, mode=STR, user=STR_OR_INT, group=STR_OR_INT, ensure_parents=BOOL),
    files=_aot(("path",), path=STR, mode=STR, user=STR_OR_INT, group=STR_OR_INT, data=STR),
    repositories=_aot(("id",), id=STR, baseurls=STRS, gpgkeys=STRS, metalink=STR, mirrorlist=STR, name=STR,
                      priority=INT, enabled=BOOL, gpgcheck=BOOL, repo_gpgcheck=BOOL, sslverify=BOOL,
                      module_hotfixes=BOOL, filename=STR, install_from=BOOL),
    fips=BOOL,
    installer=_tbl(unattended=BOOL, sudo__nopasswd=STRS, kickstart=_tbl(("contents",), contents=STR),
                   modules=_tbl(enable=STRS, disable=STRS), menu__timeout=INT),
    rhsm=_tbl(config=_tbl(
        dnf_plugins=_tbl(product_id=_tbl(enabled=BOOL), subscription_manager=_tbl(enabled=BOOL)),
        subscription_manager=_tbl(rhsm=_tbl(manage_repos=BOOL, auto_enable_yum_plugins=BOOL),
                                  rhsmcertd=_tbl(auto_registration=BOOL)),
    )),
    dnf=_tbl(config=_tbl(set_releasever=BOOL)),
    rpm=_tbl(import_keys=_tbl(files=STRS)),
    cacerts=_tbl(pem_certs=STRS),
    openscap=_tbl(datastream=STR, profile_id=STR, policy_id=STR,
                  tailoring=_tbl(selected=STRS, unselected=STRS),
                  json_tailoring=_tbl(profile_id=STR, filepath=STR)),
    containers__storage=_tbl(destination__path=STR),
    firstboot=Table(open=True),
    iso=Table(open=True),
)

BLUEPRINT_SCHEMA = _tbl(
    name=STR,
    description=STR,
    version=STR,
    distro=STR,
    architecture=STR,
    packages=_aot(("name",), name=STR, version=STR),
    modules=_aot(("name",), name=STR, version=STR),
    groups=_aot(("name",), name=STR),
    enabled_modules=_aot(("name",), name=STR, stream=STR),
    containers=_aot(("source",), source=STR, name=STR, tls__verify=BOOL, local__storage=BOOL),
    customizations=CUSTOMIZATIONS,
)

# Options each image type accepts (RHEL 9 image definitions, osbuild's imagetypes). Metadata keys (name, description,
# version, distro, architecture) are always accepted. "kernel.name" accepts only that sub-key.
_OSTREE_CONTENT = ("packages", "modules", "groups", "enabled_modules", "containers")
_COMMIT_CUSTOMIZATIONS = ("dnf", "directories", "files", "fips", "firewall", "user", "sshkey", "group", "hostname",
                          "kernel.name", "locale", "repositories", "services", "timezone", "rhsm")
IMAGE_TYPE_OPTIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "edge-commit": (_OSTREE_CONTENT, _COMMIT_CUSTOMIZATIONS),
    "edge-container": (_OSTREE_CONTENT, _COMMIT_CUSTOMIZATIONS),
    "edge-installer": ((), ("installer", "user", "sshkey", "group", "fips", "timezone", "locale")),
    "edge-simplified-installer": ((), ("dnf", "installation_device", "filesystem", "disk", "fdo", "ignition",
                                       "kernel", "user", "sshkey", "group", "fips", "files", "directories")),
    "edge-raw-image": ((), ("files", "directories", "disk", "dnf", "filesystem", "partitioning_mode", "fips",
                            "user", "sshkey", "group", "kernel.append", "locale", "services")),
}
METADATA_KEYS = ("name", "description", "version", "distro", "architecture", "customizations")


# -- line numbers ------------------------------------------------------------------------------


class _LineScanner:
    """Map key paths of an already-valid TOML document to the line that defines them.

    tomllib reports no positions, so this scans the text once: [table] and [[array]] headers (with
    the running index of each array of tables), dotted keys, inline tables and array elements.
    Lenient by design: it never raises, and a path it did not see falls back to its closest parent.
    """

    _SCALAR_END = frozenset(",]}\n#")

    def __init__(self, text: str) -> None:
        self.s = text
        self.n = len(text)
        self.i = 0
        self.line = 1
        self.lines: dict[KeyPath, int] = {}
        self.aot: dict[KeyPath, int] = {}

    # helpers
    def _peek(self, k: int = 0) -> str:
        j = self.i + k
        return self.s[j] if j < self.n else ""

    def _advance(self, k: int = 1) -> None:
        end = min(self.n, self.i + k)
        self.line += self.s.count("\n", self.i, end)
        self.i = end

    def _skip_ws(self) -> None:
        while self._peek() in (" ", "\t") and self._peek():
            self.i += 1

    def _skip_space(self) -> None:
        """Whitespace, newlines and comments."""
        while self.i < self.n:
            c = self.s[self.i]
            if c in " \t\r":
                self.i += 1
            elif c == "\n":
                self.i += 1
                self.line += 1
            elif c == "#":
                end = self.s.find("\n", self.i)
                self.i = self.n if end < 0 else end
            else:
                return

    def scan(self) -> dict[KeyPath, int]:
        try:
            self._document()
        except (IndexError, ValueError, RecursionError):
            pass  # keep what was mapped so far; lookups fall back to parents
        return self.lines

    def _resolve(self, keys: list[str]) -> KeyPath:
        path: KeyPath = ()
        for k in keys:
            path = (*path, k)
            if path in self.aot:
                path = (*path, self.aot[path])
        return path

    def _mark_prefixes(self, path: KeyPath, line: int) -> None:
        for n in range(1, len(path)):
            self.lines.setdefault(path[:n], line)

    def _document(self) -> None:
        table: KeyPath = ()
        while True:
            self._skip_space()
            if self.i >= self.n:
                return
            start = self.i
            line = self.line
            if self.s.startswith("[[", self.i):
                self._advance(2)
                keys = self._key()
                self._skip_ws()
                self._advance(2)  # ]]
                arr = (*self._resolve(keys[:-1]), keys[-1]) if keys else ()
                idx = self.aot.get(arr, -1) + 1
                self.aot[arr] = idx
                table = (*arr, idx)
                self._mark_prefixes(table, line)
                self.lines[table] = line
            elif self._peek() == "[":
                self._advance(1)
                keys = self._key()
                self._skip_ws()
                self._advance(1)  # ]
                table = self._resolve(keys)
                self._mark_prefixes(table, line)
                self.lines[table] = line
            else:
                self._keyval(table)
            if self.i == start:  # never loop without progress
                self._advance(1)

    def _key(self) -> list[str]:
        keys: list[str] = []
        while self.i < self.n:
            self._skip_ws()
            c = self._peek()
            if c == '"':
                j = self.i + 1
                while j < self.n and self.s[j] != '"':
                    j += 2 if self.s[j] == "\\" else 1
                raw = self.s[self.i:j + 1]
                keys.append(_decode_quoted_key(raw))
                self.i = min(self.n, j + 1)
            elif c == "'":
                j = self.s.find("'", self.i + 1)
                j = self.n - 1 if j < 0 else j
                keys.append(self.s[self.i + 1:j])
                self.i = j + 1
            else:
                j = self.i
                while j < self.n and (self.s[j].isalnum() or self.s[j] in "_-"):
                    j += 1
                if j == self.i:
                    break
                keys.append(self.s[self.i:j])
                self.i = j
            self._skip_ws()
            if self._peek() == ".":
                self.i += 1
                continue
            break
        return keys

    def _keyval(self, table: KeyPath) -> None:
        line = self.line
        keys = self._key()
        self._skip_ws()
        if self._peek() != "=":
            return
        self.i += 1
        path: KeyPath = (*table, *keys)
        self._mark_prefixes(path, line)
        self.lines[path] = line
        self._skip_ws()
        self._value(path)

    def _value(self, path: KeyPath) -> None:
        s = self.s
        if s.startswith('"""', self.i) or s.startswith("'''", self.i):
            q = s[self.i:self.i + 3]
            j = self.i + 3
            while j < self.n:
                if q == '"""' and s[j] == "\\":
                    j += 2
                    continue
                if s.startswith(q, j):
                    extra = 0
                    while extra < 2 and s.startswith(q[0], j + 3 + extra):
                        extra += 1
                    j += 3 + extra
                    break
                j += 1
            self._advance(j - self.i)
        elif self._peek() == '"':
            j = self.i + 1
            while j < self.n and s[j] not in '"\n':
                j += 2 if s[j] == "\\" else 1
            self._advance(j + 1 - self.i)
        elif self._peek() == "'":
            j = s.find("'", self.i + 1)
            self._advance((self.n if j < 0 else j + 1) - self.i)
        elif self._peek() == "[":
            self._advance(1)
            idx = 0
            while self.i < self.n:
                self._skip_space()
                if self._peek() in ("]", ""):
                    self._advance(1)
                    return
                start = self.i
                self.lines[(*path, idx)] = self.line
                self._value((*path, idx))
                idx += 1
                self._skip_space()
                if self._peek() == "," or self.i == start:
                    self._advance(1)
        elif self._peek() == "{":
            self._advance(1)
            while self.i < self.n:
                self._skip_space()
                if self._peek() in ("}", ""):
                    self._advance(1)
                    return
                start = self.i
                self._keyval(path)
                self._skip_space()
                if self._peek() == "," or self.i == start:
                    self._advance(1)
        else:
            j = self.i
            while j < self.n and s[j] not in self._SCALAR_END:
                j += 1
            self.i = j


def _decode_quoted_key(raw: str) -> str:
    try:
        value = tomllib.loads(f"k = {raw}")["k"]
        return value if isinstance(value, str) else raw.strip('"')
    except (tomllib.TOMLDecodeError, KeyError):
        return raw.strip('"')


def key_lines(text: str) -> dict[KeyPath, int]:
    """Key path → 1-based line for a TOML document (see _LineScanner)."""
    return _LineScanner(text).scan()


def dotted(path: KeyPath) -> str:
    """("customizations", "user", 0, "password") → "customizations.user[0].password"."""
    out = ""
    for p in path:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            part = p if re.fullmatch(r"[A-Za-z0-9_-]+", p) else f'"{p}"'
            out += f".{part}" if out else part
    return out


def with_version(bp: Blueprint, version: str) -> Blueprint:
    """The blueprint with its top-level `version` replaced (text and data), for a scheduled rebuild."""
    import dataclasses

    pattern = re.compile(r'^(version\s*=\s*)(["\'])[^"\'\n]*\2', re.M)
    header = re.search(r"^\s*\[", bp.text, re.M)  # only the top-level table, before the first header
    top_end = header.start() if header else len(bp.text)
    m = pattern.search(bp.text, 0, top_end)
    if m is None:
        raise BlueprintError("the blueprint has no top-level version line to bump", where=str(bp.path),
                             fix='add version = "1.0.0"')
    text = f"{bp.text[:m.start()]}{m.group(1)}\"{version}\"{bp.text[m.end():]}"
    data = parse(text, bp.path)
    if data.get("version") != version:
        raise BlueprintError(f"could not set the version to {version}", where=str(bp.path))
    return dataclasses.replace(bp, version=version, text=text, data=data)


# -- passwords ---------------------------------------------------------------------------------

_B64 = r"[./0-9A-Za-z]"
_CRYPT_RES = (
    re.compile(rf"^\$6\$(rounds=\d+\$)?{_B64}{{1,16}}\${_B64}{{86}}$"),  # SHA-512
    re.compile(rf"^\$5\$(rounds=\d+\$)?{_B64}{{1,16}}\${_B64}{{43}}$"),  # SHA-256
    re.compile(rf"^\$1\${_B64}{{1,8}}\${_B64}{{22}}$"),  # MD5
    re.compile(rf"^\$2[abxy]\$\d\d\${_B64}{{53}}$"),  # bcrypt
    re.compile(rf"^\$(y|gy|7)\${_B64}+\${_B64}*\${_B64}{{43}}$"),  # yescrypt, gost-yescrypt, scrypt
    re.compile(r"^\$(sha1|md5)(,rounds=\d+)?\$\S+$"),  # rarely used, checked loosely
)
_CRYPT_PREFIX = re.compile(r"^\$(1|2[abxy]|5|6|7|y|gy|sha1|md5)[$,]")


def is_crypt_hash(value: str) -> bool:
    return any(r.match(value) for r in _CRYPT_RES)


# -- the linter --------------------------------------------------------------------------------


class _Linter:
    def __init__(self, bp: Blueprint, cfg: Config) -> None:
        self.bp = bp
        self.cfg = cfg
        self.lines = key_lines(bp.text)
        self.findings: list[Finding] = []
        self.rebuild = False
        self.config_name = bp.path.stem if bp.path.name.endswith(".toml") else (bp.name or bp.path.stem)

    def line_of(self, path: KeyPath) -> int:
        for n in range(len(path), 0, -1):
            line = self.lines.get(path[:n])
            if line:
                return line
        return 1

    def where(self, path: KeyPath) -> str:
        return f"{self.bp.path}:{self.line_of(path)}"

    def add(self, rule: str, path: KeyPath, message: str, severity: str = ERROR) -> None:
        self.findings.append(Finding(rule, severity, self.where(path), message, dotted(path)))

    # unknown keys and types
    def schema(self, value: Any, spec: Spec, path: KeyPath) -> None:
        if isinstance(spec, Table):
            if not isinstance(value, dict):
                self.add("type", path, f"'{dotted(path)}' must be a table, not {_describe(value)}")
                return
            if spec.open:
                return
            for k, v in value.items():
                sub = spec.fields.get(k)
                if sub is None:
                    self.unknown(k, spec, (*path, k))
                    continue
                self.schema(v, sub, (*path, k))
            for r in spec.required:
                if r not in value:
                    self.add("type", path, f"'{dotted(path)}' is missing the required key '{r}'")
        elif isinstance(spec, ListOf):
            if not isinstance(value, list):
                if isinstance(spec.item, Table) and isinstance(value, dict):
                    self.add("type", path, f"'{dotted(path)}' must be an array of tables: write "
                                           f"[[{dotted(path)}]] instead of [{dotted(path)}]")
                else:
                    self.add("type", path, f"'{dotted(path)}' must be a list of {_plural(spec.item)}, "
                                           f"not {_describe(value)}")
                return
            for i, item in enumerate(value):
                self.schema(item, spec.item, (*path, i))
        else:
            ok = isinstance(value, spec.types) and not (isinstance(value, bool) and bool not in spec.types)
            if not ok:
                self.add("type", path, f"'{dotted(path)}' must be {spec.label}, not {_describe(value)}")

    def unknown(self, key: str, spec: Table, path: KeyPath) -> None:
        known = sorted(spec.fields)
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        if len(path) == 1 and key in CUSTOMIZATIONS.fields:
            hint = f"'{key}' belongs under [customizations]"
        elif close:
            hint = f"did you mean '{close[0]}'?"
        else:
            hint = f"known keys here: {', '.join(known)}"
        self.add("unknown-key", path, f"unknown key '{dotted(path)}'; {hint}")

    # name and version
    def name(self) -> None:
        data = self.bp.data
        if "name" not in data:
            self.add("name", (), "the blueprint has no 'name'; add name = \"…\" at the top")
            return
        name = data["name"]
        if not isinstance(name, str):
            return  # the type rule reports it
        if not name:
            self.add("name", ("name",), "name is empty")
        elif not NAME_RE.match(name):
            self.add("name", ("name",), f"name '{name}' must match ^[A-Za-z0-9._-]+$ (no spaces or slashes)")
        elif self.bp.path.suffix == ".toml" and name != self.bp.path.stem:
            self.add("name", ("name",), f"name '{name}' differs from the file name '{self.bp.path.name}'; "
                                        "edgeci and CI jobs address blueprints by file name", WARNING)

    def version(self) -> None:
        data = self.bp.data
        if "version" not in data:
            self.add("version", (), "the blueprint has no 'version'; add version = \"1.0.0\" (semver)")
            return
        v = data["version"]
        if isinstance(v, str) and parse_semver(v) is None:
            self.add("version", ("version",), f"version '{v}' is not semver MAJOR.MINOR.PATCH (e.g. 1.0.0)")

    # duplicates
    def duplicates(self) -> None:
        seen: dict[tuple[str, str], int] = {}
        for section, key, kind in (("packages", "name", "package"), ("modules", "name", "package"),
                                   ("groups", "name", "group"), ("enabled_modules", "name", "module stream"),
                                   ("containers", "source", "container")):
            items = self.bp.data.get(section)
            if not isinstance(items, list):
                continue
            for i, item in enumerate(items):
                if not isinstance(item, dict) or not isinstance(item.get(key), str):
                    continue
                ident = (kind, item[key])
                path: KeyPath = (section, i, key)
                if ident in seen:
                    self.add("duplicate-package", path,
                             f"{kind} '{item[key]}' is listed twice (first on line {seen[ident]}); keep one entry")
                else:
                    seen[ident] = self.line_of(path)

    # image type
    def image_type(self) -> str:
        return self.cfg.image_type(self.config_name)

    def image_type_options(self) -> None:
        itype = self.image_type()
        if itype not in IMAGE_TYPE_OPTIONS:
            return
        top_ok, cust_ok = IMAGE_TYPE_OPTIONS[itype]
        fix = f"or set blueprints.{self.config_name}.image_type in edgeci.yaml"
        for key, value in self.bp.data.items():
            if key in METADATA_KEYS or key not in BLUEPRINT_SCHEMA.fields or not _is_set(value):
                continue
            if key not in top_ok:
                self.add("image-type", (key,), f"'{key}' is not accepted by image type '{itype}' "
                                               f"(it installs an existing ostree commit); remove it {fix}")
        cust = self.bp.data.get("customizations")
        if not isinstance(cust, dict):
            return
        accepted = ", ".join(sorted(cust_ok)) or "none"
        for key, value in cust.items():
            if key not in CUSTOMIZATIONS.fields or not _is_set(value):
                continue
            if key in cust_ok:
                continue
            partial = [a.split(".", 1)[1] for a in cust_ok if a.startswith(key + ".")]
            if partial and isinstance(value, dict):
                for sub, subval in value.items():
                    if sub not in partial and _is_set(subval):
                        self.add("image-type", ("customizations", key, sub),
                                 f"customizations.{key}.{sub} is not accepted by image type '{itype}' "
                                 f"(only {', '.join(f'{key}.{p}' for p in partial)}); remove it {fix}")
                continue
            self.add("image-type", ("customizations", key),
                     f"customizations.{key} is not accepted by image type '{itype}' (accepted: {accepted}); "
                     f"remove it {fix}")

    def installation_device(self) -> None:
        if self.image_type() != "edge-simplified-installer":
            return
        dev = self.bp.customizations.get("installation_device")
        if not isinstance(dev, str) or not dev:
            path: KeyPath = ("customizations",) if "customizations" in self.bp.data else ()
            self.add("installation-device", path,
                     "image type 'edge-simplified-installer' needs customizations.installation_device "
                     '(e.g. installation_device = "/dev/vda")')

    # values with a shape beyond their type (paths, modes)
    def values(self) -> None:
        cust = self.bp.customizations
        for section in ("files", "directories"):
            items = cust.get(section)
            if not isinstance(items, list):
                continue
            for i, item in enumerate(items):
                if not isinstance(item, dict):
                    continue
                p = item.get("path")
                if isinstance(p, str) and not p.startswith("/"):
                    self.add("type", ("customizations", section, i, "path"),
                             f"customizations.{section}[{i}].path '{p}' must be an absolute path")
                mode = item.get("mode")
                if isinstance(mode, str) and not MODE_RE.match(mode):
                    self.add("type", ("customizations", section, i, "mode"),
                             f"customizations.{section}[{i}].mode '{mode}' must be an octal mode such as \"0644\"")

    # secrets
    def passwords(self) -> None:
        if self.cfg.lint.allow_plaintext_passwords:
            return
        users = self.bp.customizations.get("user")
        if not isinstance(users, list):
            return
        for i, user in enumerate(users):
            if not isinstance(user, dict):
                continue
            pw = user.get("password")
            if not isinstance(pw, str) or pw == "":
                continue
            who = user.get("name") if isinstance(user.get("name"), str) else f"#{i + 1}"
            path: KeyPath = ("customizations", "user", i, "password")
            if is_crypt_hash(pw):
                continue
            if _CRYPT_PREFIX.match(pw):
                msg = f"user '{who}': password looks like a crypt hash but is malformed (truncated?)"
            else:
                msg = f"user '{who}': password is clear text"
            self.add("plaintext-password", path,
                     msg + "; put a crypt hash there (`openssl passwd -6` or `mkpasswd -m sha-512`), or drop it "
                           "and use an ssh key")

    # versions against git and production
    def version_bump(self, base_text: str | None) -> None:
        if base_text is None:
            return
        current = self.bp.data.get("version")
        if not isinstance(current, str) or parse_semver(current) is None:
            return  # the version rule reports it
        try:
            base = tomllib.loads(base_text)
        except (tomllib.TOMLDecodeError, RecursionError):
            self.add("version-bump", ("version",), "the base revision's blueprint is not valid TOML; "
                                                   "version increase not checked", WARNING)
            return
        if base == self.bp.data:
            return  # unchanged (comments or formatting at most): no bump needed
        old = base.get("version")
        if not isinstance(old, str) or parse_semver(old) is None:
            return  # no comparable version before: any valid version is an increase
        if compare_versions(current, old) <= 0:
            self.add("version-bump", ("version",),
                     f"the blueprint changed since the base revision but version {current} is not higher than "
                     f"the base's {old}; bump it (e.g. to {next_patch(old)})")

    def production(self, production_version: str | None) -> None:
        prod = production_version
        if prod is None:
            pv = self.cfg.lint.production_versions
            prod = pv.get(self.config_name) or pv.get(self.bp.name) or None
        if not prod:
            return
        current = self.bp.data.get("version")
        if not isinstance(current, str) or parse_semver(current) is None:
            return
        if parse_semver(prod) is None:
            self.add("production-version", ("version",),
                     f"production version '{prod}' is not semver; cannot compare", WARNING)
            return
        if self.rebuild and compare_versions(current, prod) == 0:
            return  # a scheduled rebuild of what production runs: compose --rebuild bumps the patch
        if compare_versions(current, prod) <= 0:
            self.add("production-version", ("version",),
                     f"version {current} is not higher than production's {prod}; production versions only go up "
                     f"(bump it, e.g. to {next_patch(prod)})")


def _is_set(value: Any) -> bool:
    # osbuild-composer's CheckAllowed ignores empty values; false is set (it is an explicit choice).
    return not (value is None or value == "" or value == [] or value == {})


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, int | float):
        return f"{value} (a number)"
    if isinstance(value, str):
        shown = value if len(value) <= 30 else value[:27] + "..."
        return f"'{shown}' (a string)"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


def _plural(spec: Spec) -> str:
    if isinstance(spec, Scalar):
        return {"a string": "strings", "an integer": "integers"}.get(spec.label, spec.label)
    return "tables" if isinstance(spec, Table) else "lists"


def lint_blueprint(
    bp: Blueprint,
    cfg: Config,
    *,
    base_text: str | None = None,
    production_version: str | None = None,
    rebuild: bool = False,
) -> list[Finding]:
    """Every finding for a parsed blueprint, sorted by line. Never raises for bad content.

    base_text: the TOML at the base revision (git show BASE:path), None when there is none (new blueprint
    or no base given). production_version: overrides cfg.lint.production_versions for this blueprint.
    rebuild: a scheduled rebuild, where a version equal to production's is fine (compose bumps it).
    """
    lint = _Linter(bp, cfg)
    lint.rebuild = rebuild
    lint.schema(bp.data, BLUEPRINT_SCHEMA, ())
    lint.name()
    lint.version()
    lint.duplicates()
    lint.image_type_options()
    lint.installation_device()
    lint.values()
    lint.passwords()
    lint.version_bump(base_text)
    lint.production(production_version)
    return sorted(lint.findings, key=lambda f: (f.lineno, list(RULES).index(f.rule)))


def not_applicable(
    bp: Blueprint | None,
    cfg: Config,
    *,
    base_text: str | None = None,
    base_given: bool = False,
    production_version: str | None = None,
) -> dict[str, str]:
    """Rules that were not evaluated for this blueprint → why (JUnit marks them skipped with the reason)."""
    if bp is None:
        return {r: "not checked: the file does not parse" for r in RULES if r != "syntax"}
    out: dict[str, str] = {}
    name = bp.path.stem
    itype = cfg.image_type(name)
    if itype != "edge-simplified-installer":
        out["installation-device"] = f"image type is {itype}"
    if cfg.lint.allow_plaintext_passwords:
        out["plaintext-password"] = "lint.allow_plaintext_passwords is true"
    if not base_given:
        out["version-bump"] = "no base revision given (--base)"
    elif base_text is None:
        out["version-bump"] = "new blueprint: it does not exist at the base revision"
    pv = cfg.lint.production_versions
    if not (production_version or pv.get(name) or pv.get(bp.name)):
        out["production-version"] = "no production version known"
    return out


@dataclass
class LintResult:
    """The lint outcome of one file."""

    path: Path
    name: str  # the file name's stem: how edgeci and CI jobs address the blueprint
    sha256: str
    blueprint: Blueprint | None
    findings: list[Finding]
    skipped: dict[str, str]

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == ERROR]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == WARNING]

    @property
    def ok(self) -> bool:
        return not self.errors


def syntax_finding(raw: bytes, path: Path) -> Finding | None:
    """The syntax finding for a file's bytes (not UTF-8, or invalid TOML), or None when it parses."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        return Finding("syntax", ERROR, f"{path}:{line}", f"the file is not UTF-8 (byte {e.start})")
    try:
        parse(text, path)
    except BlueprintError as e:
        where = e.where or str(path)
        if not re.search(r":\d+$", where):
            where = f"{path}:1"
        return Finding("syntax", ERROR, where, e.message.rstrip(".") + "; fix the TOML syntax")
    return None


def lint_file(
    path: str | os.PathLike[str],
    cfg: Config,
    *,
    base_text: str | None = None,
    base_given: bool = False,
    production_version: str | None = None,
    rebuild: bool = False,
    env: Mapping[str, str] | None = None,
) -> LintResult:
    """Lint one blueprint file (and its checks file). A syntax error is a finding; an unreadable file is a
    BlueprintError. `env` (default os.environ) gives ${NAME} values to judge rendered values with."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise BlueprintError("blueprint file not found", where=str(p), fix="check the path") from None
    except IsADirectoryError:
        raise BlueprintError("is a directory, not a blueprint file", where=str(p)) from None
    except OSError as e:
        raise BlueprintError(f"cannot read blueprint: {e.strerror}", where=str(p)) from None
    sha = hashlib.sha256(raw).hexdigest()
    try:
        bp = load(p, raw=raw)
    except BlueprintError:
        bad = syntax_finding(raw, p)  # the same error, shaped as a finding with file:line
        if bad is None:
            raise
        return LintResult(p, p.stem, sha, None, [bad], not_applicable(None, cfg))
    findings = lint_blueprint(bp, cfg, base_text=base_text, production_version=production_version,
                              rebuild=rebuild)
    findings = _template_findings(bp, cfg, findings, os.environ if env is None else env)
    findings += _checks_findings(bp, cfg) + _location_findings(bp, cfg)
    findings.sort(key=lambda f: (f.where.rsplit(":", 1)[0] != str(p), f.lineno, list(RULES).index(f.rule)))
    skipped = not_applicable(bp, cfg, base_text=base_text, base_given=base_given,
                             production_version=production_version)
    return LintResult(p, p.stem, sha, bp, findings, skipped)


def _template_findings(bp: Blueprint, cfg: Config, findings: list[Finding], env: Mapping[str, str]) -> list[Finding]:
    """The template rule: placeholders declared and allowed where they are; value rules judged on rendered values
    (when the environment has every value) instead of on the placeholder text."""
    from edgeci import templates

    name = bp.path.stem
    declared_names = templates.declared(cfg, name)
    uses = templates.uses(bp.data)
    lint = _Linter(bp, cfg)
    cfg_file = Path(cfg.source).name if cfg.source != "(embedded default)" else "edgeci.yaml"
    where_cfg = f"blueprints.{name}.variables in {cfg_file}"
    for tf in templates.lint(bp.data, bp.text, declared_names, config_where=where_cfg):
        lint.add(templates.RULE, tf.path, tf.message)
    if not uses:
        return findings + lint.findings
    templated = {dotted(u.path) for u in uses}
    kept = [f for f in findings if not (f.rule in VALUE_RULES and f.key in templated)]
    names = sorted({u.name for u in uses})
    if lint.findings or not all(n in env for n in names):
        return kept + lint.findings
    values = {n: env[n] for n in names}
    templates.register_values(values)
    rendered = templates.render_data(bp.data, values)
    for tf in templates.check_values(bp.data, rendered):
        lint.add(templates.RULE, tf.path, tf.message)
    import dataclasses

    rbp = dataclasses.replace(bp, data=rendered)
    for f in lint_blueprint(rbp, cfg):
        if f.rule in VALUE_RULES and f.key in templated:
            shown = ", ".join(f"${{{u.name}}}" for u in uses if dotted(u.path) == f.key)
            lint.findings.append(Finding(f.rule, f.severity, f.where,
                                         f"{f.key} rendered from {shown} fails: {RULES[f.rule]}", f.key))
    return kept + lint.findings


def _checks_findings(bp: Blueprint, cfg: Config) -> list[Finding]:
    """The checks rule: NAME.checks.yaml beside the blueprint parses strictly (first error, file:line)."""
    from edgeci import templates
    from edgeci.checks import ChecksError, load_text, parse_checks

    path = bp.checks_path
    if not path.is_file():
        return []
    try:
        text = load_text(path)
        parse_checks(text, str(path), declared=tuple(templates.declared(cfg, bp.path.stem)))
    except ChecksError as e:
        where = e.where if e.where and re.search(r":\d+$", e.where) else f"{path}:1"
        return [Finding("checks", ERROR, where, e.message + (f"; {e.fix}" if e.fix else ""))]
    return []


def _location_findings(bp: Blueprint, cfg: Config) -> list[Finding]:
    from edgeci.target import location_problem

    # Judged against the project's repository when the path (as written, '..' folded) is below the project,
    # else against the repository holding the file's directory: lint also takes files from elsewhere.
    written = Path(os.path.normpath(bp.path.absolute()))
    root: Path | None = cfg.root if written.is_relative_to(Path(os.path.normpath(cfg.root.absolute()))) else None
    out = []
    for p in (bp.path, bp.checks_path):
        if p is bp.checks_path and not (p.exists() or p.is_symlink()):
            continue
        problem = location_problem(p, root)
        if problem:
            out.append(Finding("location", ERROR, f"{p}:1", problem))
    return out


def iter_blueprint_files(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """NAME.toml files from files and directories (a directory contributes its *.toml, sorted)."""
    out: list[Path] = []
    for item in paths:
        p = Path(item)
        if p.is_dir():
            out.extend(sorted(x for x in p.glob("*.toml") if x.is_file()))
        elif p.is_file():
            out.append(p)
        else:
            raise BlueprintError("no such file or directory", where=str(p), fix="check the path")
    return out
