"""Boot-test health checks: blueprints/<name>.checks.yaml parsed strictly, rendered to greenboot scripts.

Declarative checks (file_exists, file_contains, user_exists, group_exists, service_enabled,
os_release_version, booted_commit, command) and greenboot-style scripts. The composer renders them into
usr/etc/greenboot/check/{required,wanted}.d/NN-<name>.sh; a boot test can also evaluate the ones that need
no running system against a deployed tree (evaluate_in_tree). The contract is described in docs/testos.md.
"""

from __future__ import annotations

import difflib
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from edgeci.errors import BlueprintError

NAME_RE = re.compile(r"^[A-Za-z0-9._-]+$")
# systemd unit names (systemd.unit(5)): name[@instance].type, at most 255 characters.
UNIT_TYPES = ("service", "socket", "target", "timer", "path", "mount", "automount", "swap", "slice", "scope",
              "device")
UNIT_RE = re.compile(r"^[A-Za-z0-9:_.\\-]+(@[A-Za-z0-9:_.\\-]*)?\.(" + "|".join(UNIT_TYPES) + r")$")
# user and group names as shadow-utils accepts them
ACCOUNT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?$")
PLACEHOLDER_STANDIN = "edgeci-variable"
KINDS = ("file_exists", "file_contains", "user_exists", "group_exists", "service_enabled",
         "os_release_version", "booted_commit", "command")
RUNNING_KINDS = frozenset({"command", "script", "booted_commit"})
TOP_KEYS = ("checks", "scripts")
CHECK_KEYS = ("name", "wanted", *KINDS)
SCRIPT_KEYS = ("name", "required", "run")
SUBKEYS = {
    "file_contains": {"path": True, "text": True},  # key → required
    "command": {"run": True, "exit": False, "output": False},
}
# NN-<name>.sh sorts by NN; 99 is left for the boot test's injected failure.
MAX_CHECKS = 98


class ChecksError(BlueprintError):
    """The checks file cannot be read or is invalid (file:line in `where`)."""


@dataclass
class Check:
    """One health check. `args` is the kind's value: a string, True, or a dict (file_contains, command);
    for scripts, {"run": TEXT}."""

    name: str
    kind: str  # one of KINDS, or "script"
    args: Any
    required: bool = True
    line: int = 0

    @property
    def needs_running(self) -> bool:
        """True when only a booted system (or the host watching its console) can evaluate it."""
        return self.kind in RUNNING_KINDS

    @property
    def kind_dir(self) -> str:
        return "required.d" if self.required else "wanted.d"


@dataclass
class ChecksFile:
    path: Path | None
    checks: list[Check] = field(default_factory=list)

    def by_name(self, name: str) -> Check:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)


# -- parsing ----------------------------------------------------------------------------------------

class _Parser:
    def __init__(self, source: str, values: dict[str, str] | None = None,
                 declared: tuple[str, ...] | None = None) -> None:
        self.source = source
        self.values = values  # ${NAME} values (compose, boot test); None: a stand-in (lint without values)
        self.declared = declared  # names a placeholder may use; None: any

    def where(self, node: Any) -> str:
        return f"{self.source}:{node.start_mark.line + 1}"

    def error(self, node: Any, message: str, fix: str | None = None) -> ChecksError:
        return ChecksError(message, where=self.where(node), fix=fix)

    def mapping(self, node: Any, what: str, allowed: tuple[str, ...]) -> dict[str, tuple[Any, Any]]:
        """{key: (key_node, value_node)}; rejects non-mappings, duplicate and unknown keys."""
        import yaml

        if not isinstance(node, yaml.MappingNode):
            raise self.error(node, f"{what} must be a mapping, not {_node_type(node)}")
        out: dict[str, tuple[Any, Any]] = {}
        for k, v in node.value:
            if not isinstance(k, yaml.ScalarNode):
                raise self.error(k, f"{what} has a key that is not a string")
            key = str(k.value)
            if key in out:
                raise self.error(k, f"duplicate key '{key}' in {what}")
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                fix = f"did you mean '{close[0]}'?" if close else f"allowed keys: {', '.join(allowed)}"
                if key == "wanted" and "required" in allowed:
                    fix = "a script says required: false instead of wanted: true"
                raise self.error(k, f"unknown key '{key}' in {what}", fix)
            out[key] = (k, v)
        return out

    def scalar(self, node: Any, what: str, types: tuple[type, ...]) -> Any:
        import yaml

        if not isinstance(node, yaml.ScalarNode):
            raise self.error(node, f"{what} must be {_type_words(types)}, not {_node_type(node)}")
        loader = yaml.SafeLoader("")
        value = loader.construct_object(node)
        if (bool not in types and isinstance(value, bool)) or not isinstance(value, types):
            raise self.error(node, f"{what} must be {_type_words(types)}, not {value!r}")
        return value

    def string(self, node: Any, what: str) -> str:
        value = self.scalar(node, what, (str, int, float))
        if isinstance(value, bool):
            raise self.error(node, f"{what} must be a string, not {value!r}")
        text = str(value) if not isinstance(value, str) else value
        if not text:
            raise self.error(node, f"{what} must not be empty")
        return self.render(node, what, text)

    def render(self, node: Any, what: str, text: str) -> str:
        """`text` with its ${NAME} placeholders rendered (or replaced by a stand-in when no values are given)."""
        from edgeci.templates import PLACEHOLDER_RE, VARIABLE_NAME_RE, render_string

        names = [m.group(2) for m in PLACEHOLDER_RE.finditer(text) if not m.group(1)]
        if not names:
            return render_string(text, {})
        for n in names:
            if not VARIABLE_NAME_RE.match(n):
                raise self.error(node, f"'${{{n}}}' in {what} is not a variable name", "write $${…} for a literal ${…}")
            if self.declared is not None and n not in self.declared:
                raise self.error(node, f"${{{n}}} in {what} is not declared",
                                 "add it to blueprints.<name>.variables in edgeci.yaml")
            if self.values is not None and n not in self.values:
                raise self.error(node, f"${{{n}}} in {what} has no value", f"set {n} in the environment")
        values = self.values if self.values is not None else {n: PLACEHOLDER_STANDIN for n in names}
        return render_string(text, values)

    def path(self, node: Any, what: str) -> str:
        p = self.string(node, what)
        if not p.startswith("/"):
            raise self.error(node, f"{what} must be an absolute path, not '{_shown(p)}'", "start it with /")
        if any(ord(ch) < 32 or ch == "\x7f" for ch in p):
            raise self.error(node, f"{what} contains a control character (a newline?)", "give one path")
        return p

    def true(self, node: Any, what: str) -> bool:
        value = self.scalar(node, what, (bool,))
        if value is not True:
            raise self.error(node, f"{what} must be true", "remove the check instead of setting it false")
        return True


def _shown(text: str, limit: int = 80) -> str:
    """A value for an error message: control characters escaped, long values cut."""
    shown = text.encode("unicode_escape").decode("ascii")
    return shown if len(shown) <= limit else shown[:limit] + "…"


def _node_type(node: Any) -> str:
    import yaml

    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return f"'{node.value}'"


def _type_words(types: tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
    return " or ".join(dict.fromkeys(names[t] for t in types if t in names))


def _parse_check(p: _Parser, node: Any, index: int) -> Check:
    what = f"checks[{index}]"
    keys = p.mapping(node, what, CHECK_KEYS)
    if "name" not in keys:
        raise p.error(node, f"{what} has no 'name'", "add name: <a-short-name>")
    name = p.string(keys["name"][1], f"{what}.name")
    what = f"check '{name}'"
    kinds = [k for k in keys if k in KINDS]
    if len(kinds) != 1:
        raise p.error(node, f"{what} has {'no' if not kinds else len(kinds)} kind keys"
                      + (f" ({', '.join(kinds)})" if kinds else ""),
                      f"give exactly one of: {', '.join(KINDS)}")
    kind = kinds[0]
    knode, vnode = keys[kind]
    required = True
    if "wanted" in keys:
        required = not p.scalar(keys["wanted"][1], f"{what}.wanted", (bool,))
    args: Any
    if kind in ("file_exists",):
        args = p.path(vnode, f"{what}.{kind}")
    elif kind in ("user_exists", "group_exists"):
        args = p.string(vnode, f"{what}.{kind}")
        if not ACCOUNT_RE.match(args) or args.isdigit():
            raise p.error(vnode, f"{what}.{kind} is not a valid name: '{_shown(args)}'",
                          f"a {kind.split('_')[0]} name uses letters, digits, '.', '_' and '-' (at most 32, not "
                          "starting with a digit)")
    elif kind == "service_enabled":
        args = p.string(vnode, f"{what}.{kind}")
        if "/" in args:
            raise p.error(vnode, f"{what}.{kind} must be a unit name, not a path", "e.g. sshd.service")
        if "." not in args:
            args += ".service"
        if not UNIT_RE.match(args) or len(args) > 255:
            raise p.error(vnode, f"{what}.{kind} is not a systemd unit name: '{_shown(args)}'",
                          "use NAME.service (letters, digits, ':', '_', '.', '-', '\\', one '@' for an "
                          f"instance); unit types: {', '.join(UNIT_TYPES)}")
    elif kind in ("os_release_version", "booted_commit"):
        args = p.true(vnode, f"{what}.{kind}")
    else:
        sub = p.mapping(vnode, f"{what}.{kind}", tuple(SUBKEYS[kind]))
        for key, needed in SUBKEYS[kind].items():
            if needed and key not in sub:
                raise p.error(vnode, f"{what}.{kind} has no '{key}'",
                              f"give {', '.join(k for k, r in SUBKEYS[kind].items() if r)}")
        args = {}
        for key, (_, v) in sub.items():
            if key == "path":
                args[key] = p.path(v, f"{what}.{kind}.{key}")
            elif key == "exit":
                code = p.scalar(v, f"{what}.{kind}.exit", (int,))
                if not 0 <= code <= 255:
                    raise p.error(v, f"{what}.{kind}.exit must be 0..255, not {code}")
                args[key] = code
            else:
                args[key] = p.string(v, f"{what}.{kind}.{key}")
        if kind == "command":
            args.setdefault("exit", 0)
    return Check(name=name, kind=kind, args=args, required=required, line=knode.start_mark.line + 1)


def _parse_script(p: _Parser, node: Any, index: int) -> Check:
    what = f"scripts[{index}]"
    keys = p.mapping(node, what, SCRIPT_KEYS)
    if "name" not in keys:
        raise p.error(node, f"{what} has no 'name'", "add name: <a-short-name>")
    name = p.string(keys["name"][1], f"{what}.name")
    if "run" not in keys:
        raise p.error(node, f"script '{name}' has no 'run'", "add run: | with the script text")
    run_text = p.string(keys["run"][1], f"script '{name}'.run")
    required = True
    if "required" in keys:
        required = p.scalar(keys["required"][1], f"script '{name}'.required", (bool,))
    return Check(name=name, kind="script", args={"run": run_text}, required=required,
                 line=keys["name"][0].start_mark.line + 1)


def parse_checks(text: str, source: str = "<checks>", *, values: dict[str, str] | None = None,
                 declared: tuple[str, ...] | None = None) -> ChecksFile:
    """Parse checks YAML text strictly. Errors name source:line and the fix.

    `${NAME}` placeholders in string values are rendered from `values` (when given; a neutral stand-in
    otherwise) and, with `declared`, must name a declared variable."""
    import yaml

    p = _Parser(source, values, declared)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ChecksError(f"invalid YAML: {problem}", where=where, fix="fix the syntax (indentation, quoting)") \
            from None
    result = ChecksFile(path=Path(source) if source != "<checks>" else None)
    if root is None:
        return result
    top = p.mapping(root, "the checks file", TOP_KEYS)
    seen: dict[str, int] = {}
    for key, parse in (("checks", _parse_check), ("scripts", _parse_script)):
        if key not in top:
            continue
        _, vnode = top[key]
        if isinstance(vnode, yaml.ScalarNode) and vnode.value in ("", "~", "null"):
            continue
        if not isinstance(vnode, yaml.SequenceNode):
            raise p.error(vnode, f"'{key}' must be a list, not {_node_type(vnode)}", f"write {key}: then - items")
        for i, item in enumerate(vnode.value):
            check = parse(p, item, i)
            if not NAME_RE.match(check.name):
                raise p.error(item, f"check name '{check.name}' is not allowed",
                              "use only letters, digits, '.', '_' and '-'")
            if check.name in seen:
                raise p.error(item, f"duplicate check name '{check.name}' (first at line {seen[check.name]})",
                              "give every check a unique name")
            seen[check.name] = check.line
            result.checks.append(check)
    if len(result.checks) > MAX_CHECKS:
        raise ChecksError(f"{len(result.checks)} checks; at most {MAX_CHECKS} are supported", where=source,
                          fix="merge some checks into scripts")
    return result


def load_checks(path: str | os.PathLike[str], *, values: dict[str, str] | None = None,
                expected_sha256: str | None = None) -> ChecksFile:
    """Read and parse blueprints/<name>.checks.yaml. With `expected_sha256` (the record's
    blueprint.checks_sha256), refuse a file whose bytes differ from what was composed and recorded."""
    p = Path(path)
    if expected_sha256 is not None:
        verify_recorded(p, expected_sha256)
    result = parse_checks(load_text(p), str(p), values=values)
    result.path = p
    return result


def load_text(path: str | os.PathLike[str]) -> str:
    """The checks file's text; ChecksError for a missing, unreadable or non-UTF-8 file."""
    p = Path(path)
    try:
        return p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ChecksError("checks file not found", where=str(p)) from None
    except UnicodeDecodeError as e:
        raise ChecksError(f"checks file is not UTF-8 (byte {e.start})", where=str(p)) from None
    except OSError as e:
        raise ChecksError(f"cannot read checks file: {e.strerror}", where=str(p)) from None


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of the checks file's bytes ("" when there is no checks file)."""
    import hashlib

    p = Path(path)
    try:
        return hashlib.sha256(p.read_bytes()).hexdigest()
    except FileNotFoundError:
        return ""
    except OSError as e:
        raise ChecksError(f"cannot read checks file: {e.strerror}", where=str(p)) from None


def verify_recorded(path: str | os.PathLike[str], expected_sha256: str) -> None:
    """ChecksError naming both hashes unless the checks file is exactly the one the record names ("" = none)."""
    p = Path(path)
    actual = file_sha256(p)
    if actual == expected_sha256:
        return
    what = "is missing" if not actual else f"has sha256 {actual}"
    recorded = expected_sha256 or "(no checks file)"
    raise ChecksError(f"checks file {what}, but the candidate was composed with {recorded}", where=str(p),
                      fix="restore the checks file of the composed commit (git checkout), or compose again")


def rendered_yaml(text: str, values: dict[str, str]) -> str:
    """The checks YAML with its placeholders rendered in the parsed values (never by text substitution), for a
    composer that renders the checks into the image."""
    import yaml

    from edgeci.templates import render_data

    data = yaml.safe_load(text)
    return str(yaml.safe_dump(render_data(data, values), sort_keys=False, allow_unicode=True))


# -- rendering to greenboot scripts --------------------------------------------------------------------

def _q(s: str) -> str:
    return shlex.quote(s)


def _contains(path: str, text: str) -> str:
    # $(cat) drops trailing newlines: the sentinel keeps them, so `text` matches exactly as a substring.
    return (f"f={_q(path)}\n"
            f"[ -f \"$f\" ] || {{ echo \"$f does not exist\"; exit 1; }}\n"
            "content=$(cat \"$f\"; echo x)\n"
            "content=${content%x}\n"
            f"case \"$content\" in\n  *{_q(text)}*) echo \"$f contains the text\" ;;\n"
            f"  *) echo \"$f does not contain:\"; printf '%s\\n' {_q(text)}; exit 1 ;;\nesac\n")


def render_script(check: Check, version: str) -> str | None:
    """The sh script for one check, or None for booted_commit (the host evaluates it from EDGECI-BOOT)."""
    head = f"#!/bin/sh\n# edgeci check '{check.name}' ({check.kind})\n"
    a = check.args
    if check.kind == "booted_commit":
        return None
    if check.kind == "script":
        text: str = a["run"]
        if not text.startswith("#!"):
            text = "#!/bin/sh\n" + text
        return text if text.endswith("\n") else text + "\n"
    if check.kind == "file_exists":
        body = f"if [ -e {_q(a)} ] || [ -L {_q(a)} ]; then echo {_q(a + ' exists')}; " \
               f"else echo {_q(a + ' does not exist')}; exit 1; fi\n"
    elif check.kind == "file_contains":
        body = _contains(a["path"], a["text"])
    elif check.kind in ("user_exists", "group_exists"):
        db = "/etc/passwd" if check.kind == "user_exists" else "/etc/group"
        what = "user" if check.kind == "user_exists" else "group"
        body = (f"if cut -d: -f1 {db} | grep -qxF -- {_q(a)}; then echo {_q(f'{what} {a} exists')}; "
                f"else echo {_q(f'no {what} {a} in {db}')}; exit 1; fi\n")
    elif check.kind == "service_enabled":
        # On a running systemd: the unit must exist and its unit file be enabled (aliases such as Debian's
        # sshd.service → ssh.service resolve to their unit). Without systemd (the busybox test OS): the link.
        body = ("if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then\n"
                f"  load=$(systemctl show -p LoadState --value {_q(a)})\n"
                f"  state=$(systemctl show -p UnitFileState --value {_q(a)})\n"
                f"  printf '%s: LoadState=%s UnitFileState=%s\\n' {_q(a)} \"$load\" \"$state\"\n"
                "  [ \"$load\" = loaded ] && { [ \"$state\" = enabled ] || [ \"$state\" = enabled-runtime ]; }\n"
                "  exit $?\n"
                "fi\n"
                f"for link in /etc/systemd/system/*.wants/{_q(a)}; do\n"
                f"  if [ -L \"$link\" ] || [ -e \"$link\" ]; then printf '%s enabled: %s\\n' {_q(a)} \"$link\"; "
                "exit 0; fi\n"
                f"done\necho {_q(a + ' is not enabled')}\nexit 1\n")
    elif check.kind == "os_release_version":
        # IMAGE_VERSION (os-release's field for an image's own version) when the OS has it, else VERSION
        body = (f"expected={_q(version)}\n"
                "key=IMAGE_VERSION\n"
                "grep -q '^IMAGE_VERSION=' /etc/os-release || key=VERSION\n"
                "actual=$(sed -n \"s/^$key=//p\" /etc/os-release | head -n 1 | tr -d \"\\\"'\")\n"
                "echo \"$key=$actual (expected $expected)\"\n"
                "[ \"$actual\" = \"$expected\" ]\n")
    elif check.kind == "command":
        body = (f"out=$(sh -c {_q(a['run'])} 2>&1)\nrc=$?\nprintf '%s\\n' \"$out\"\n"
                f"[ \"$rc\" -eq {int(a['exit'])} ] || {{ echo \"exit status $rc, expected {int(a['exit'])}\"; "
                "exit 1; }\n")
        if "output" in a:
            body += (f"case \"$out\" in\n  *{_q(a['output'])}*) ;;\n"
                     f"  *) echo \"output does not contain:\"; printf '%s\\n' {_q(a['output'])}; exit 1 ;;\nesac\n")
    else:  # pragma: no cover - parse_checks admits only KINDS
        raise ValueError(f"unknown check kind {check.kind}")
    return head + body


def render_scripts(checks_file: ChecksFile, version: str) -> dict[str, str]:
    """{"required.d/NN-name.sh" | "wanted.d/NN-name.sh": script text}; NN is the check's position
    (01…) in the file, so checks run in the order they are written."""
    out: dict[str, str] = {}
    for i, check in enumerate(checks_file.checks, start=1):
        text = render_script(check, version)
        if text is not None:
            out[f"{check.kind_dir}/{i:02d}-{check.name}.sh"] = text
    return out


# -- evaluating against a tree (no running system) -------------------------------------------------------

def resolve_in_tree(root: Path, path: str, *, max_links: int = 40) -> Path:
    """`path` as the booted system would see it with `root` as /: symlinks (absolute or relative)
    are followed inside root. /etc falls back to /usr/etc for an undeployed commit checkout."""
    parts = [p for p in PurePosixPath(path).parts if p != "/"]
    if parts and parts[0] == "etc" and not (root / "etc").exists() and (root / "usr" / "etc").is_dir():
        parts = ["usr", "etc", *parts[1:]]
    resolved: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = root.joinpath(*resolved, part)
        if candidate.is_symlink():
            hops += 1
            if hops > max_links:
                raise OSError(f"too many levels of symbolic links: {path}")
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in PurePosixPath(target).parts if p != "/"] + parts
            continue
        resolved.append(part)
    return root.joinpath(*resolved)


def _exists_in_tree(root: Path, path: str) -> bool:
    p = PurePosixPath(path)
    parent = resolve_in_tree(root, str(p.parent))
    return (parent / p.name).is_symlink() or resolve_in_tree(root, path).exists()


def _db_names(root: Path, db: str) -> list[str]:
    p = resolve_in_tree(root, db)
    try:
        return [line.split(":", 1)[0] for line in p.read_text(errors="replace").splitlines() if ":" in line]
    except OSError:
        return []


def _os_release_version(root: Path) -> str | None:
    """IMAGE_VERSION when the os-release has it (an image-based OS's own version), else VERSION."""
    for path in ("/etc/os-release", "/usr/lib/os-release"):
        p = resolve_in_tree(root, path)
        if p.is_file():
            keys = dict(line.split("=", 1) for line in p.read_text(errors="replace").splitlines() if "=" in line)
            value = keys.get("IMAGE_VERSION", keys.get("VERSION"))
            return None if value is None else value.strip().strip("\"'")
    return None


def evaluate_in_tree(check: Check, tree_root: str | os.PathLike[str], version: str,
                     booted_commit: str | None = None, *, expected_commit: str | None = None) -> tuple[bool, str]:
    """Evaluate a check against a deployed tree (or a commit checkout) without booting it.

    booted_commit: the commit the system booted (the EDGECI-BOOT line, or the sysroot's booted
    deployment); it is compared with `expected_commit`, by default the checksum in the deployment
    directory's name (…/deploy/CHECKSUM.SERIAL). Raises ValueError for command and script checks.
    """
    root = Path(tree_root)
    a = check.args
    if check.kind == "file_exists":
        ok = _exists_in_tree(root, a)
        return ok, f"{a} {'exists' if ok else 'does not exist'}"
    if check.kind == "file_contains":
        p = resolve_in_tree(root, a["path"])
        if not p.is_file():
            return False, f"{a['path']} does not exist"
        ok = a["text"] in p.read_text(errors="replace")
        return ok, f"{a['path']} {'contains the text' if ok else 'does not contain: ' + a['text']}"
    if check.kind in ("user_exists", "group_exists"):
        db = "/etc/passwd" if check.kind == "user_exists" else "/etc/group"
        what = "user" if check.kind == "user_exists" else "group"
        ok = a in _db_names(root, db)
        return ok, f"{what} {a} exists" if ok else f"no {what} {a} in {db}"
    if check.kind == "service_enabled":
        systemd = resolve_in_tree(root, "/etc/systemd/system")
        # enablement links usually dangle in a tree (their unit is not there): lstat, not exists()
        links = sorted(d / a for d in systemd.glob("*.wants") if (d / a).is_symlink() or (d / a).exists()) \
            if systemd.is_dir() else []
        if links:
            return True, f"{a} enabled: /etc/systemd/system/{links[0].parent.name}/{a}"
        return False, f"{a} is not enabled"
    if check.kind == "os_release_version":
        actual = _os_release_version(root)
        return actual == version, f"version {actual} (expected {version})"
    if check.kind == "booted_commit":
        expected = expected_commit
        if expected is None:
            name = root.resolve().name
            expected = name.rsplit(".", 1)[0] if "." in name else None
        if not booted_commit:
            return False, "the booted commit is unknown (no EDGECI-BOOT line)"
        if not expected:
            return False, f"booted {booted_commit}, but the expected commit is unknown"
        ok = booted_commit == expected
        return ok, f"booted {booted_commit}" + ("" if ok else f", expected {expected}")
    raise ValueError(f"check '{check.name}' ({check.kind}) needs a running system")
