"""An image-mode (bootc) image's source in git, and a line-accurate reading of its Containerfile.

Layout: one directory per image, `blueprints/NAME/`, holding `Containerfile`, the boot-test checks in
`checks.yaml`, and whatever the Containerfile COPYs. The directory is the build context, so

- a build sees only this image's files (never another blueprint's TOML, secrets or checks), and
- "what changed" is exact: any file under `blueprints/NAME/` changes the image, nothing outside it does.

A flat `blueprints/NAME.Containerfile` would make `blueprints/` the context of every image, so change
detection could not tell which files an image uses. `blueprints/NAME.toml` (ostree kind) and
`blueprints/NAME/Containerfile` (image kind) must not both exist: `kind_of` refuses the ambiguity.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from edgeci.errors import BlueprintError

CONTAINERFILE = "Containerfile"
CHECKS = "checks.yaml"
KIND_OSTREE = "ostree"
KIND_IMAGE = "image"

VERSION_LABELS = ("org.opencontainers.image.version", "version")
BOOTC_LABELS = {"containers.bootc": "1", "ostree.bootable": "1"}


@dataclass(frozen=True)
class ImageSource:
    """blueprints/NAME/: the Containerfile, the checks file and the build context."""

    name: str
    directory: Path

    @property
    def containerfile(self) -> Path:
        return self.directory / CONTAINERFILE

    @property
    def checks_path(self) -> Path:
        return self.directory / CHECKS

    @property
    def context(self) -> Path:
        return self.directory


def find(blueprints: str | os.PathLike[str], name: str) -> ImageSource:
    """The image source NAME under `blueprints`; BlueprintError when it has no Containerfile."""
    src = ImageSource(name, Path(blueprints) / name)
    if not src.containerfile.is_file():
        raise BlueprintError(f"no Containerfile for image '{name}'", where=str(src.containerfile),
                             fix=f"create {src.containerfile} (image mode) or blueprints/{name}.toml (ostree)")
    return src


def discover(blueprints: str | os.PathLike[str]) -> list[ImageSource]:
    """Every blueprints/NAME/Containerfile, sorted by name."""
    base = Path(blueprints)
    if not base.is_dir():
        return []
    return [ImageSource(d.name, d) for d in sorted(base.iterdir()) if (d / CONTAINERFILE).is_file()]


def kind_of(blueprints: str | os.PathLike[str], name: str) -> str:
    """"ostree" for blueprints/NAME.toml, "image" for blueprints/NAME/Containerfile; BlueprintError for
    neither or both."""
    base = Path(blueprints)
    toml, cf = base / f"{name}.toml", base / name / CONTAINERFILE
    if toml.is_file() and cf.is_file():
        raise BlueprintError(f"'{name}' is both an ostree blueprint and an image-mode Containerfile",
                             where=f"{toml} and {cf}", fix="rename one of them: a name has one kind")
    if toml.is_file():
        return KIND_OSTREE
    if cf.is_file():
        return KIND_IMAGE
    raise BlueprintError(f"no blueprint '{name}'", where=str(base),
                         fix=f"create {toml} (ostree) or {cf} (image mode)")


def owner_of(path: str) -> str | None:
    """The image NAME a changed repository path belongs to (blueprints/NAME/…), else None."""
    parts = Path(path).parts
    if len(parts) >= 3 and parts[0] == "blueprints":
        return parts[1]
    return None


# -- Containerfile -----------------------------------------------------------------------------------

@dataclass
class Instruction:
    """One instruction: keyword (upper case), its argument text (continuations joined), first line."""

    keyword: str
    args: str
    line: int
    flags: dict[str, str] = field(default_factory=dict)


@dataclass
class Stage:
    """FROM … [AS name] and the instructions up to the next FROM."""

    base: str  # the reference as written, ARGs substituted
    base_raw: str
    name: str | None
    line: int
    instructions: list[Instruction] = field(default_factory=list)

    def labels(self) -> dict[str, tuple[str, int]]:
        """key → (value, line) of this stage's LABEL instructions, the last one winning."""
        out: dict[str, tuple[str, int]] = {}
        for ins in self.instructions:
            if ins.keyword == "LABEL":
                for k, v in parse_label_args(ins.args):
                    out[k] = (v, ins.line)
        return out


@dataclass
class Containerfile:
    path: str
    instructions: list[Instruction]
    stages: list[Stage]
    global_args: dict[str, str]

    @property
    def final(self) -> Stage:
        return self.stages[-1]


_FLAG = re.compile(r"^--([A-Za-z-]+)(?:=(\S*))?\s*")
_VAR = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-+][^}]*)?\}|([A-Za-z_][A-Za-z0-9_]*))")


def _logical_lines(text: str) -> list[tuple[str, int]]:
    """(instruction text, first line number) with comments dropped and `\\` continuations joined.

    Honors the `# escape=` parser directive (` or \\).
    """
    escape = "\\"
    lines = text.splitlines()
    for raw in lines:
        m = re.match(r"^\s*#\s*escape\s*=\s*([`\\])\s*$", raw, re.I)
        if m:
            escape = m.group(1)
            break
        if not re.match(r"^\s*#\s*\w+\s*=", raw):
            break
    out: list[tuple[str, int]] = []
    buf: list[str] = []
    start = 0
    for i, raw in enumerate(lines, 1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and buf):
            continue  # comments and empty lines inside a continuation do not end it
        if not stripped:
            continue
        if not buf:
            start = i
        if stripped.endswith(escape):
            buf.append(stripped[:-1].rstrip())
            continue
        buf.append(stripped)
        out.append((" ".join(p for p in buf if p), start))
        buf = []
    if buf:
        out.append((" ".join(p for p in buf if p), start))
    return out


def substitute(value: str, args: dict[str, str]) -> tuple[str, list[str]]:
    """`value` with $NAME / ${NAME} / ${NAME:-default} replaced from `args`; also the names left unresolved."""
    missing: list[str] = []

    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name in args:
            return args[name]
        dm = re.match(r"\$\{[A-Za-z_][A-Za-z0-9_]*:?-([^}]*)\}", m.group(0))
        if dm:
            return dm.group(1)
        missing.append(name)
        return m.group(0)

    return _VAR.sub(repl, value), missing


def _unquote(v: str) -> str:
    if len(v) >= 2 and v[0] == v[-1] and v[0] in "\"'":
        inner = v[1:-1]
        return inner.replace('\\"', '"') if v[0] == '"' else inner
    return v


def parse_label_args(args: str) -> list[tuple[str, str]]:
    """LABEL k=v k2="v 2" … (or the legacy `LABEL key value with spaces`) → [(key, value)]."""
    pairs = re.findall(r'((?:"(?:[^"\\]|\\.)*"|[^\s=])+)=("(?:[^"\\]|\\.)*"|\'[^\']*\'|\S*)', args)
    if pairs:
        return [(_unquote(k), _unquote(v)) for k, v in pairs]
    key, _, value = args.partition(" ")
    return [(_unquote(key), _unquote(value.strip()))] if key else []


def parse(text: str, path: str | os.PathLike[str]) -> Containerfile:
    """Instructions and stages with their line numbers; BlueprintError (file:line) when there is no FROM
    or an instruction comes before the first FROM (other than ARG)."""
    where = os.fspath(path)
    instructions: list[Instruction] = []
    for body, line in _logical_lines(text):
        keyword, _, rest = body.partition(" ")
        rest = rest.strip()
        flags: dict[str, str] = {}
        while True:
            m = _FLAG.match(rest)
            if not m:
                break
            flags[m.group(1).lower()] = m.group(2) or ""
            rest = rest[m.end():]
        instructions.append(Instruction(keyword.upper(), rest, line, flags))
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            parts = ins.args.split()
            if not parts:
                raise BlueprintError("FROM names no image", where=f"{where}:{ins.line}")
            raw = parts[0]
            base, _ = substitute(raw, global_args)
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base, raw, name, ins.line))
        elif not stages:
            if ins.keyword != "ARG":
                raise BlueprintError(f"{ins.keyword} before the first FROM", where=f"{where}:{ins.line}",
                                     fix="start the Containerfile with FROM (only ARG may come before it)")
            k, eq, v = ins.args.partition("=")
            if eq:  # `ARG NAME` without a default leaves ${NAME} unresolved
                global_args[k.strip()] = _unquote(v.strip())
        else:
            stages[-1].instructions.append(ins)
    if not stages:
        raise BlueprintError("the Containerfile has no FROM", where=f"{where}:1",
                             fix="start it with FROM <bootc base image>@sha256:<digest>")
    return Containerfile(where, instructions, stages, global_args)


def load(path: str | os.PathLike[str]) -> Containerfile:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise BlueprintError(f"cannot read the Containerfile: {e}", where=os.fspath(path)) from None
    return parse(text, path)


def version_of(cf: Containerfile) -> tuple[str, int] | None:
    """(version, line) from the final stage's LABEL org.opencontainers.image.version (or `version`)."""
    labels = cf.final.labels()
    for key in VERSION_LABELS:
        if key in labels:
            return labels[key]
    return None
