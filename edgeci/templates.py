"""Templated blueprints: `${NAME}` placeholders in blueprint string values, rendered at compose from CI variables.

A blueprint's project declares the variables it may use in edgeci.yaml (`blueprints.<bp>.variables: [NAME, …]`);
their values come from the environment of the compose job (a masked, protected GitLab CI/CD variable, a Jenkins
credential bound with withCredentials). `$${NAME}` is a literal `${NAME}` (a shell script in a file's data).

Rules:
- a placeholder names a declared variable; name, version and distro are always literal;
- a placeholder sits in a double-quoted (basic) TOML string, so its value can be escaped into the text;
- every value is registered with the secret mask before anything is printed, and only the template, its sha256,
  the names of the variables used and a sha256 of each value are ever recorded or shown.

Rendering happens in memory: the TOML text with each placeholder replaced by its TOML-escaped value, parsed back
and compared with the parsed template whose strings were rendered one by one — a value can never add a key.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from edgeci.errors import BlueprintError, ConfigError

PLACEHOLDER_RE = re.compile(r"\$(\$?)\{([^}\n]*)\}")
VARIABLE_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
LITERAL_KEYS = ("name", "version", "distro")
RULE = "template"

KeyPath = tuple[str | int, ...]


class TemplateError(BlueprintError):
    """A templated blueprint cannot be rendered (file:line in `where`)."""


class MissingVariable(ConfigError):
    """A declared variable is not in the compose job's environment (exit 2: configuration)."""


@dataclass(frozen=True)
class Use:
    """One placeholder: where it is (key path) and the variable it names (as written)."""

    path: KeyPath
    name: str


def _strings(data: Any, path: KeyPath = ()) -> Iterator[tuple[KeyPath, str]]:
    if isinstance(data, str):
        yield path, data
    elif isinstance(data, Mapping):
        for k, v in data.items():
            yield from _strings(v, (*path, str(k)))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from _strings(v, (*path, i))


def uses(data: Mapping[str, Any]) -> list[Use]:
    """Every `${NAME}` placeholder in the string values of parsed TOML/YAML data (escaped `$${…}` excluded)."""
    out = []
    for path, text in _strings(data):
        for m in PLACEHOLDER_RE.finditer(text):
            if not m.group(1):
                out.append(Use(path, m.group(2)))
    return out


def has_placeholders(text: str) -> bool:
    return any(not m.group(1) for m in PLACEHOLDER_RE.finditer(text))


def render_string(text: str, values: Mapping[str, str]) -> str:
    """`text` with each ${NAME} replaced by values[NAME] (left as it is without a value) and each $${NAME}
    by ${NAME}."""
    def sub(m: re.Match[str]) -> str:
        if m.group(1):
            return "${" + m.group(2) + "}"
        return values.get(m.group(2), m.group(0))
    return PLACEHOLDER_RE.sub(sub, text)


def render_data(data: Any, values: Mapping[str, str]) -> Any:
    if isinstance(data, str):
        return render_string(data, values)
    if isinstance(data, Mapping):
        return {k: render_data(v, values) for k, v in data.items()}
    if isinstance(data, list):
        return [render_data(v, values) for v in data]
    return data


def _toml_escape(value: str) -> str:
    """A value as the inside of a TOML basic string ("…")."""
    out = []
    for ch in value:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)


def value_sha256(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def derived_forms(value: str) -> list[str]:
    """The forms a value may take in text edgeci writes: as is, its lines, JSON- and TOML-escaped, base64 and
    URL-encoded (so the mask finds it in a record, a report or a request body too)."""
    forms = {value, _toml_escape(value), json.dumps(value)[1:-1], urllib.parse.quote(value, safe=""),
             urllib.parse.quote_plus(value), base64.b64encode(value.encode()).decode()}
    forms |= {line.strip() for line in value.splitlines() if len(line.strip()) >= 8}
    return sorted(f for f in forms if f)


def register_values(values: Mapping[str, str]) -> None:
    """Mask every value (and its derived forms) wherever edgeci prints, logs or records text from now on."""
    from edgeci.tools.run import register_secret

    for v in values.values():
        for form in derived_forms(v):
            register_secret(form)


# -- declared variables ---------------------------------------------------------------------------------

def declared(cfg: Any, name: str) -> list[str]:
    """The variables edgeci.yaml declares for blueprint `name` (blueprints.<name>.variables)."""
    return list(getattr(cfg.blueprint(name), "variables", []) or [])


def _declared_where(cfg: Any, name: str) -> str:
    return f"{getattr(cfg, 'source', 'edgeci.yaml')}: blueprints.{name}.variables"


def where_to_define(name: str) -> str:
    return (f"define {name} in the compose job's environment: a masked and protected GitLab CI/CD variable, "
            f"or a Jenkins credential bound with withCredentials([string(credentialsId: …, variable: '{name}')])")


# -- lint -----------------------------------------------------------------------------------------------

@dataclass
class TemplateFinding:
    path: KeyPath
    message: str


def lint(data: Mapping[str, Any], text: str, declared_names: Sequence[str], *, config_where: str = "edgeci.yaml",
         ) -> list[TemplateFinding]:
    """Findings of the template itself: undeclared names, placeholders in literal keys, placeholders that are
    not inside a double-quoted string, declared names that are not variable names."""
    out: list[TemplateFinding] = []
    for d in declared_names:
        if not VARIABLE_NAME_RE.match(d):
            out.append(TemplateFinding((), f"declared variable '{d}' ({config_where}) is not a variable name "
                                           "(letters, digits and _, not starting with a digit)"))
    known = set(declared_names)
    for u in uses(data):
        key = _dotted(u.path)
        if not VARIABLE_NAME_RE.match(u.name):
            out.append(TemplateFinding(u.path, f"'${{{u.name}}}' in {key} is not a variable name; write $${{…}} "
                                               "for a literal ${…}"))
        elif len(u.path) == 1 and u.path[0] in LITERAL_KEYS:
            out.append(TemplateFinding(u.path, f"{key} must be literal, but it holds the placeholder ${{{u.name}}} "
                                               "(name, version and distro identify the build)"))
        elif u.name not in known:
            out.append(TemplateFinding(u.path, f"${{{u.name}}} in {key} is not declared; add it to {config_where} "
                                               "or write $${…} for a literal"))
    if not out and uses(data):
        probe = {u.name: "edgeci\"probe\\\n" for u in uses(data)}
        try:
            render_text(text, data, probe, source="")
        except TemplateError as e:
            out.append(TemplateFinding(getattr(e, "path", ()), e.message))
    return out


# -- rendering ------------------------------------------------------------------------------------------

@dataclass
class Rendered:
    """A rendered blueprint (in memory only), with what may be recorded about it."""

    text: str
    data: dict[str, Any]
    template_sha256: str
    variables: dict[str, str] = field(default_factory=dict)  # name → sha256 of the value

    def record(self) -> dict[str, Any]:
        """For the record, reports and the gate: names and hashes, never a value."""
        return {"template": bool(self.variables), "template_sha256": self.template_sha256,
                "variables": dict(sorted(self.variables.items()))}


def _dotted(path: KeyPath) -> str:
    from edgeci.blueprint import dotted

    return dotted(path) or "(top level)"


def _first_difference(a: Any, b: Any, path: KeyPath = ()) -> KeyPath | None:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                return (*path, k)
            d = _first_difference(a[k], b[k], (*path, k))
            if d is not None:
                return d
        return None
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            d = _first_difference(x, y, (*path, i))
            if d is not None:
                return d
        return None
    return None if a == b and type(a) is type(b) else path


def render_text(text: str, data: Mapping[str, Any], values: Mapping[str, str], *, source: str,
                locate: bool = True) -> str:
    """The TOML text with every placeholder replaced by its escaped value; TemplateError when the result does
    not parse to exactly the template's data with its strings rendered (a placeholder in a '…' string)."""
    import tomllib

    from edgeci.blueprint import key_lines

    def sub(m: re.Match[str]) -> str:
        if m.group(1) or m.group(2) not in values:  # an escape, or a placeholder in a comment
            return "${" + m.group(2) + "}" if m.group(1) else m.group(0)
        return _toml_escape(values[m.group(2)])

    rendered = PLACEHOLDER_RE.sub(sub, text)
    expected = render_data(data, values)
    try:
        got = tomllib.loads(rendered)
    except tomllib.TOMLDecodeError:
        got = None
    diff = _first_difference(expected, got) if got is not None else ()
    if got is None or diff is not None:
        path = diff or (_culprit(text, data, values) if locate else None) or ()
        line = 1
        lines = key_lines(text)
        for n in range(len(path), 0, -1):
            if path[:n] in lines:
                line = lines[path[:n]]
                break
        err = TemplateError(f"a placeholder in {_dotted(path)} is not inside a double-quoted string, so its value "
                            "cannot be written into it", where=f"{source}:{line}" if source else "",
                            fix='write the value as "…" (a basic string) or """…""" (a multi-line basic string)')
        err.path = path  # type: ignore[attr-defined]
        raise err
    return rendered


def _culprit(text: str, data: Mapping[str, Any], values: Mapping[str, str]) -> KeyPath | None:
    """The first use of the first variable whose value alone cannot be rendered into the text."""
    for name in values:
        try:
            render_text(text, data, {name: values[name]}, source="", locate=False)
        except TemplateError:
            return next((u.path for u in uses(data) if u.name == name), None)
    return None


def values_from_env(names: Sequence[str], env: Mapping[str, str], *, blueprint: str, where: str) -> dict[str, str]:
    """The values of the variables a template uses, from the environment; MissingVariable naming the first
    absent one and where CI should define it."""
    out = {}
    for n in names:
        if n not in env:
            raise MissingVariable(f"variable {n} of blueprint {blueprint} is not set in the environment",
                                  where=where, fix=where_to_define(n))
        out[n] = env[n]
    return out


def render_blueprint(text: str, data: Mapping[str, Any], declared_names: Sequence[str], env: Mapping[str, str], *,
                     blueprint: str, source: str, template_sha256: str) -> Rendered:
    """Render a blueprint for compose: values registered with the mask first, then the text rendered and
    checked. A blueprint without placeholders renders to itself."""
    used = sorted({u.name for u in uses(data)})
    if not used:
        return Rendered(text, dict(data), template_sha256)
    undeclared = [n for n in used if n not in declared_names]
    if undeclared:
        first = next(u for u in uses(data) if u.name in undeclared)
        raise TemplateError(f"${{{first.name}}} in {_dotted(first.path)} is not declared", where=source,
                            fix=f"add it to blueprints.{blueprint}.variables in edgeci.yaml")
    where = f"{source} (declared in blueprints.{blueprint}.variables)"
    values = values_from_env(used, env, blueprint=blueprint, where=where)
    register_values(values)
    rendered = render_text(text, data, values, source=source)
    return Rendered(rendered, render_data(data, values), template_sha256,
                    {n: value_sha256(values[n]) for n in used})


# -- rendered values ------------------------------------------------------------------------------------

SSH_KEY_TYPES = ("ssh-ed25519", "ssh-rsa", "ssh-dss", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
                 "ecdsa-sha2-nistp521", "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com")
USER_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?$")
HOSTNAME_RE = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                         r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")


def is_ssh_public_key(text: str) -> bool:
    """One or more OpenSSH public key lines (type, base64 blob whose embedded type matches, optional comment)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return False
    for line in lines:
        parts = line.split()
        if len(parts) < 2 or parts[0] not in SSH_KEY_TYPES:
            return False
        try:
            blob = base64.b64decode(parts[1], validate=True)
        except ValueError:
            return False
        if len(blob) < 4:
            return False
        n = int.from_bytes(blob[:4], "big")
        if blob[4:4 + n].decode("ascii", "replace") != parts[0]:
            return False
    return True


def _kind(path: KeyPath) -> str:
    """What a key holds, for the rendered-value rules: ssh-key, user, group, hostname, path or ""."""
    if len(path) >= 4 and path[0] == "customizations":
        section, last = path[1], path[-1]
        if section in ("user", "sshkey") and last == "key":
            return "ssh-key"
        if (section == "user" and last == "name") or (section == "sshkey" and last == "user"):
            return "user"
        if section in ("files", "directories") and last in ("user", "group"):
            return "user" if last == "user" else "group"
        if section == "group" and last == "name":
            return "group"
        if section in ("files", "directories") and last == "path":
            return "path"
        if section == "user" and last == "groups":
            return ""
    if path == ("customizations", "hostname"):
        return "hostname"
    return ""


def check_values(template: Mapping[str, Any], rendered: Mapping[str, Any]) -> list[TemplateFinding]:
    """Rendered values that are not what their key needs: an SSH key that is not one, a user or group name
    that is not one, a hostname or path that is not one. Messages name the key and the variables, never
    the value."""
    used: dict[KeyPath, list[str]] = {}
    for u in uses(template):
        used.setdefault(u.path, []).append(u.name)
    out: list[TemplateFinding] = []
    for path, names in used.items():
        value: Any = rendered
        for p in path:
            value = value[p]
        if not isinstance(value, str):
            continue
        kind = _kind(path)
        bad = ""
        if "\0" in value:
            bad = "contains a NUL character"
        elif kind == "ssh-key" and not is_ssh_public_key(value):
            bad = "is not an SSH public key (\"ssh-ed25519 AAAA… comment\", one key per line)"
        elif kind in ("user", "group") and (not USER_NAME_RE.match(value) or value.isdigit()):
            bad = f"is not a {kind} name (letters, digits, '.', '_', '-', at most 32, not starting with a digit)"
        elif kind == "hostname" and not HOSTNAME_RE.match(value):
            bad = "is not a host name"
        elif kind == "path" and not value.startswith("/"):
            bad = "is not an absolute path"
        if bad:
            shown = ", ".join(f"${{{n}}}" for n in dict.fromkeys(names))
            out.append(TemplateFinding(path, f"{_dotted(path)} rendered from {shown} {bad}"))
    return out
