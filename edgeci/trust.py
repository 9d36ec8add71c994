"""The trust policy: what the PRODUCTION HOST accepts, in a YAML file that lives there (default
/etc/edgeci/trust.yaml), never in the project's edgeci.yaml, the environment or --set.

It names the public keys of each signing role, the approval rules, the boot-test scenarios and backends
that count, change windows and freezes, and production's ostree GPG key. `effective()` combines it with
the project's gate settings so that for every security setting the stricter one wins, and says where
they differ. Loading is strict: unknown keys, wrong types, duplicate keys, anchors and aliases are
ConfigErrors (exit 2) naming file:line and the fix.

    schema: 1
    keys:
      compose:   [{name: ci-compose, file: keys/compose.pub}]
      boot-test: [{name: ci-boot-test, file: keys/boot-test.pub}]
      approver:  [{name: alice, approver: alice, pem: "-----BEGIN PUBLIC KEY-----..."}]
    approvals_required: 2
    allowed_approvers: [alice, bob]
    allowed_groups: [platform/release-managers]
    required_scenarios: [install, upgrade, rollback]
    accepted_backends: [qemu, libvirt]
    windows: ["Mon-Fri 08:00-17:00"]
    freeze: ["2026-12-20..2027-01-05"]
    production: {gpg_key: 0123ABCD..., gpg_homedir: /etc/edgeci/gnupg}
    require_signed_production: true
"""

from __future__ import annotations

import difflib
import importlib
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edgeci.errors import ConfigError, EdgeCIError
from edgeci.evidence.rolekeys import PRODUCTION_ROLE, ROLES, PublicKey

SCHEMA = 1
DEFAULT_PATH = "/etc/edgeci/trust.yaml"
SCENARIOS = ("install", "upgrade", "rollback")
BACKENDS = ("device", "qemu", "libvirt", "sysroot")
DEFAULT_SCENARIOS = SCENARIOS
DEFAULT_BACKENDS = ("device", "qemu", "libvirt")  # sysroot deploys but never boots a kernel
TOP_KEYS = ("schema", "keys", "approvals_required", "allowed_approvers", "allowed_groups", "required_scenarios",
            "accepted_backends", "windows", "freeze", "production", "require_signed_production")
KEY_ENTRY_KEYS = ("name", "file", "pem", "approver")
PRODUCTION_KEYS = ("gpg_key", "gpg_homedir")


def _gate_policy() -> Any:
    """edgeci.policy (parse_window, parse_freeze, check_window), imported when a policy is loaded."""
    return importlib.import_module("edgeci.policy")


@dataclass(frozen=True)
class Settings:
    """One side's security settings (the trust policy's, or the project's)."""

    approvals_required: int = 1
    allowed_approvers: tuple[str, ...] = ()  # empty: anyone but the change's authors
    allowed_groups: tuple[str, ...] = ()
    required_scenarios: tuple[str, ...] = DEFAULT_SCENARIOS
    accepted_backends: tuple[str, ...] = DEFAULT_BACKENDS
    windows: tuple[str, ...] = ()
    freeze: tuple[str, ...] = ()
    require_signed_production: bool = True


@dataclass(frozen=True)
class ProductionKey:
    gpg_key: str = ""
    gpg_homedir: str = ""


@dataclass(frozen=True)
class TrustPolicy:
    source: str
    keys: tuple[PublicKey, ...] = ()
    settings: Settings = field(default_factory=Settings)
    production: ProductionKey = field(default_factory=ProductionKey)
    schema: int = SCHEMA
    lines: Mapping[tuple[str, ...], int] = field(default_factory=dict, compare=False, repr=False)

    def keys_for(self, role: str) -> list[PublicKey]:
        return [k for k in self.keys if k.role == role]

    def where(self, *path: str) -> str:
        for n in range(len(path), 0, -1):
            line = self.lines.get(tuple(path[:n]))
            if line:
                return f"{self.source}:{line}: {'.'.join(path)}"
        return f"{self.source}: {'.'.join(path)}" if path else self.source


# -- the stricter of two sides ----------------------------------------------------------------------

def _ids(values: Iterable[str]) -> set[str]:
    from edgeci.policy import identities

    return identities(values)


@dataclass(frozen=True)
class ApproverRule:
    """Who one side allows to approve: the listed users, or members of the listed groups."""

    origin: str  # "trust policy" | "project" | "trust policy and project"
    users: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()

    def allows(self, user: str, aliases: Sequence[str] = (), groups: Iterable[str] | None = None) -> str:
        """"" when allowed, else why not."""
        if _ids([user, *aliases]) & _ids(self.users):
            return ""
        if self.groups:
            if groups is None:
                return (f"{user} is not among the {self.origin}'s allowed approvers and the approval does not "
                        "say which groups they belong to")
            if {g.casefold() for g in self.groups} & {g.casefold() for g in groups}:
                return ""
            return f"{user} is neither an allowed approver nor in the groups {', '.join(self.groups)} ({self.origin})"
        return f"{user} is not among the {self.origin}'s allowed approvers ({', '.join(self.users)})"

    def describe(self) -> str:
        parts = []
        if self.users:
            parts.append(", ".join(self.users))
        if self.groups:
            parts.append("groups " + ", ".join(self.groups))
        return "; ".join(parts) or "anyone"


@dataclass(frozen=True)
class Effective:
    """The settings production enforces: the trust policy's, made stricter (never looser) by the project's."""

    approvals_required: int
    approver_rules: tuple[ApproverRule, ...]  # an approver must be allowed by every rule
    required_scenarios: tuple[str, ...]
    accepted_backends: tuple[str, ...]
    window_sets: tuple[tuple[str, ...], ...]  # inside some window of every set
    freeze: tuple[str, ...]
    require_signed_production: bool

    def approver_problem(self, user: str, aliases: Sequence[str] = (), groups: Iterable[str] | None = None) -> str:
        """"" when every rule allows `user`, else the first rule's reason."""
        group_list = None if groups is None else list(groups)
        for rule in self.approver_rules:
            why = rule.allows(user, aliases, group_list)
            if why:
                return why
        return ""

    def window_problem(self, now: datetime) -> str:
        """"" when `now` is inside a window of every set and outside every freeze, else why not."""
        gp = _gate_policy()
        for windows in self.window_sets:
            result = gp.check_window(list(windows), now)
            if result.outcome != "passed":
                return str(result.reason)
        result = gp.check_freeze(list(self.freeze), now)
        return "" if result.outcome == "passed" else str(result.reason)

    def window_summary(self, now: datetime) -> str:
        now = now if now.tzinfo else now.replace(tzinfo=UTC)
        shown = now.astimezone(UTC).strftime("%a %Y-%m-%d %H:%M UTC")
        if not self.window_sets and not self.freeze:
            return f"{shown}: no change windows or freezes"
        return f"{shown} is inside the change windows and outside every freeze"


PROJECT_KEYS = ("approvals_required", "allowed_approvers", "allowed_groups", "required_scenarios",
                "accepted_backends", "windows", "freeze", "require_signed_production")


def project_settings(cfg: Any) -> dict[str, Any]:
    """The project's security settings from its edgeci Config (gate.* and whether prod signs)."""
    from edgeci.policy import boot_requirements

    gate, prod = cfg.gate, cfg.prod
    scenarios, backends = boot_requirements(gate)
    return {
        "required_scenarios": list(scenarios),
        "accepted_backends": list(backends),
        "approvals_required": int(gate.approvals_required),
        "allowed_approvers": list(gate.allowed_users),
        "allowed_groups": list(gate.allowed_groups),
        "windows": list(gate.windows),
        "freeze": list(gate.freeze),
        "require_signed_production": bool(prod.gpg_key),
    }


def _listed(values: Sequence[str]) -> str:
    return ", ".join(values) if values else "none"


def effective(policy: TrustPolicy, project: Settings | Mapping[str, Any] | None = None,
              ) -> tuple[Effective, list[str]]:
    """(what production enforces, one printable line per setting where the project and the trust policy
    differ). For each security setting the stricter side wins: more approvals, approvers both allow,
    the union of required scenarios, backends both accept, windows of both, freezes of either, signing
    when either asks. Settings the project does not state leave the trust policy's as they are."""
    t = policy.settings
    if project is None:
        p: Mapping[str, Any] = {}
    elif isinstance(project, Settings):
        p = {k: getattr(project, k) for k in PROJECT_KEYS}
    else:
        unknown = sorted(set(project) - set(PROJECT_KEYS))
        if unknown:
            raise ValueError(f"unknown project gate settings: {', '.join(unknown)}")
        p = project
    diffs: list[str] = []

    approvals = t.approvals_required
    if "approvals_required" in p:
        mine = int(p["approvals_required"])
        if mine > approvals:
            diffs.append(f"approvals_required: the project asks {mine}, the trust policy {approvals} → {mine}")
            approvals = mine
        elif mine < approvals:
            diffs.append(f"approvals_required: the project's {mine} is below the trust policy's {approvals} "
                         f"→ {approvals}")

    rules: list[ApproverRule] = []
    trule = ApproverRule("trust policy", tuple(t.allowed_approvers), tuple(t.allowed_groups))
    prule = ApproverRule("project", tuple(p.get("allowed_approvers", ())), tuple(p.get("allowed_groups", ())))
    t_open, p_open = not (trule.users or trule.groups), not (prule.users or prule.groups)
    if not t_open and not p_open and not trule.groups and not prule.groups:
        both = tuple(u for u in trule.users if _ids([u]) & _ids(prule.users))
        rules.append(ApproverRule("trust policy and project", both))
        if set(_ids(trule.users)) != set(_ids(prule.users)):
            diffs.append(f"allowed approvers: the trust policy allows {trule.describe()}, the project "
                         f"{prule.describe()} → only {_listed(both)}"
                         + (" (no one can approve)" if not both else ""))
    else:
        rules.extend(r for r in (trule, prule) if r.users or r.groups)
        if (set(_ids(trule.users)), {g.casefold() for g in trule.groups}) != (
                set(_ids(prule.users)), {g.casefold() for g in prule.groups}):
            if p_open:
                if "allowed_approvers" in p or "allowed_groups" in p:
                    diffs.append(f"allowed approvers: the project allows anyone, the trust policy only "
                                 f"{trule.describe()} → {trule.describe()}")
            elif t_open:
                diffs.append(f"allowed approvers: the trust policy allows anyone, the project only "
                             f"{prule.describe()} → {prule.describe()}")
            else:
                diffs.append(f"allowed approvers: an approver must be allowed by both the trust policy "
                             f"({trule.describe()}) and the project ({prule.describe()})")

    scenarios = tuple(t.required_scenarios)
    if "required_scenarios" in p:
        extra = tuple(s for s in p["required_scenarios"] if s not in scenarios)
        if extra:
            scenarios = scenarios + extra
            diffs.append(f"required_scenarios: the project adds {_listed(extra)} → {_listed(scenarios)}")

    backends = tuple(t.accepted_backends)
    if "accepted_backends" in p:
        mine_b = tuple(p["accepted_backends"])
        both_b = tuple(b for b in backends if b in mine_b)
        if set(both_b) != set(backends) or set(both_b) != set(mine_b):
            diffs.append(f"accepted_backends: the trust policy accepts {_listed(backends)}, the project "
                         f"{_listed(mine_b)} → {_listed(both_b)}"
                         + (" (no boot test can count)" if not both_b else ""))
        backends = both_b

    window_sets = [tuple(t.windows)] if t.windows else []
    p_windows = tuple(p.get("windows", ()))
    if p_windows and set(p_windows) != set(t.windows):
        window_sets.append(p_windows)
        if t.windows:
            diffs.append(f"windows: inside both the trust policy's ({_listed(t.windows)}) and the project's "
                         f"({_listed(p_windows)}) change windows")
        else:
            diffs.append(f"windows: the trust policy has none, the project's apply ({_listed(p_windows)})")
    elif "windows" in p and not p_windows and t.windows:
        diffs.append(f"windows: the project has none, the trust policy's apply ({_listed(t.windows)})")

    freeze = tuple(t.freeze)
    extra_f = tuple(f for f in p.get("freeze", ()) if f not in freeze)
    if extra_f:
        freeze = freeze + extra_f
        diffs.append(f"freeze: the project adds {_listed(extra_f)} → {_listed(freeze)}")

    signed = t.require_signed_production
    if "require_signed_production" in p and bool(p["require_signed_production"]) != signed:
        if p["require_signed_production"]:
            diffs.append("require_signed_production: the project signs production, the trust policy does not "
                         "ask it → required")
        else:
            diffs.append("require_signed_production: the trust policy requires a signed production repo, "
                         "the project does not sign → required")
        signed = True

    eff = Effective(approvals, tuple(rules), scenarios, backends, tuple(window_sets), freeze, signed)
    return eff, diffs


# -- strict loading ---------------------------------------------------------------------------------

class _Doc:
    """The parsed YAML document: plain values plus the line of every key path."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.lines: dict[tuple[str, ...], int] = {}

    def where(self, path: tuple[str, ...], line: int | None = None) -> str:
        key = ".".join(path)
        if line is None:
            for n in range(len(path), 0, -1):
                line = self.lines.get(path[:n])
                if line:
                    break
        loc = f"{self.source}:{line}" if line else self.source
        return f"{loc}: {key}" if key else loc

    def fail(self, message: str, path: tuple[str, ...], fix: str | None = None, line: int | None = None) -> ConfigError:
        return ConfigError(message, where=self.where(path, line), fix=fix)


def _parse_yaml(text: str, doc: _Doc) -> Any:
    from edgeci.yamlfile import load_strict

    data, lines = load_strict(text, doc.source, aliases=False, what="the trust policy")
    doc.lines.update(lines)
    return data


def _unknown(doc: _Doc, data: Mapping[str, Any], known: Sequence[str], path: tuple[str, ...]) -> None:
    for k in data:
        if k not in known:
            close = difflib.get_close_matches(k, list(known), n=1)
            fix = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(known)}"
            raise doc.fail(f"unknown key '{k}'", (*path, k), fix=fix)


def _str(doc: _Doc, value: Any, path: tuple[str, ...]) -> str:
    if not isinstance(value, str) or not value.strip():
        raise doc.fail(f"must be a non-empty string, not {value!r}", path)
    return value.strip()


def _str_list(doc: _Doc, value: Any, path: tuple[str, ...], *, choices: Sequence[str] = (),
              nonempty: bool = False) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise doc.fail(f"must be a list of strings, not {type(value).__name__}", path,
                       fix=f"write e.g. [{', '.join(choices[:2]) or 'alice, bob'}]")
    out = []
    for i, v in enumerate(value):
        s = _str(doc, v, (*path, str(i)))
        if choices and s not in choices:
            close = difflib.get_close_matches(s, list(choices), n=1)
            raise doc.fail(f"'{s}' is not allowed", (*path, str(i)),
                           fix=f"did you mean '{close[0]}'?" if close else f"use one of: {', '.join(choices)}")
        if s in out:
            raise doc.fail(f"'{s}' is listed twice", (*path, str(i)))
        out.append(s)
    if nonempty and not out:
        raise doc.fail("must not be empty", path, fix=f"list at least one of: {', '.join(choices)}")
    return tuple(out)


def _keys(doc: _Doc, value: Any, base: Path) -> tuple[PublicKey, ...]:
    from edgeci.errors import KeyFileError
    from edgeci.evidence.rolekeys import load_public_key, parse_public_key

    if not isinstance(value, dict):
        raise doc.fail("must be a mapping of role → list of public keys", ("keys",),
                       fix=f"roles: {', '.join(ROLES)}")
    out: list[PublicKey] = []
    seen: dict[str, tuple[str, ...]] = {}
    for role, entries in value.items():
        rpath = ("keys", role)
        if role == PRODUCTION_ROLE:
            raise doc.fail("the production key is a GPG key, not an Ed25519 public key", rpath,
                           fix="set production.gpg_key (and production.gpg_homedir) instead")
        if role not in ROLES:
            close = difflib.get_close_matches(role, list(ROLES), n=1)
            raise doc.fail(f"unknown role '{role}'", rpath,
                           fix=f"did you mean '{close[0]}'?" if close else f"use one of: {', '.join(ROLES)}")
        if not isinstance(entries, list):
            raise doc.fail("must be a list of keys", rpath, fix="write e.g. - {name: ci, file: compose.pub}")
        for i, entry in enumerate(entries):
            epath = (*rpath, str(i))
            if isinstance(entry, str):
                entry = {"file": entry}
            if not isinstance(entry, dict):
                raise doc.fail("must be a key file path or a mapping with name and file or pem", epath)
            _unknown(doc, entry, KEY_ENTRY_KEYS, epath)
            if ("file" in entry) == ("pem" in entry):
                raise doc.fail("give exactly one of 'file' and 'pem'", epath)
            name = _str(doc, entry["name"], (*epath, "name")) if "name" in entry else ""
            approver = _str(doc, entry["approver"], (*epath, "approver")) if "approver" in entry else ""
            if approver and role != "approver":
                raise doc.fail("'approver' binds an approver key to a person; it is only for keys.approver",
                               (*epath, "approver"))
            try:
                if "file" in entry:
                    fpath = Path(os.path.expanduser(_str(doc, entry["file"], (*epath, "file"))))
                    key = load_public_key(fpath if fpath.is_absolute() else base / fpath, role, name=name,
                                          approver=approver)
                else:
                    key = parse_public_key(_str(doc, entry["pem"], (*epath, "pem")), role, name=name,
                                           approver=approver)
            except KeyFileError as e:
                field_name = "file" if "file" in entry else "pem"
                raise doc.fail(e.message, (*epath, field_name), fix=e.fix) from None
            key = PublicKey(role, key.key, name=name, source=doc.where(epath), approver=approver)
            if key.keyid in seen:
                raise doc.fail(f"the same key ({key.keyid[:12]}) is already listed at "
                               f"{'.'.join(seen[key.keyid])}", epath,
                               fix="one key per role: a key that signs for two roles defeats the roles")
            seen[key.keyid] = epath
            out.append(key)
    return tuple(out)


def parse_policy(text: str, source: str = "trust.yaml", *, base: Path | None = None) -> TrustPolicy:
    """A TrustPolicy from YAML text (key files relative to `base`, default the source's directory)."""
    doc = _Doc(source)
    data = _parse_yaml(text, doc)
    if not isinstance(data, dict):
        raise doc.fail("the trust policy must be a mapping", (), line=1,
                       fix="start from the example in docs/trust.md")
    _unknown(doc, data, TOP_KEYS, ())
    if "schema" not in data:
        raise doc.fail("no 'schema'", (), line=1, fix=f"add 'schema: {SCHEMA}'")
    if data["schema"] != SCHEMA or isinstance(data["schema"], bool):
        raise doc.fail(f"schema {data['schema']!r} is not supported (this edgeci reads {SCHEMA})", ("schema",))
    base = base if base is not None else Path(source).resolve().parent
    keys = _keys(doc, data["keys"], base) if "keys" in data else ()

    kw: dict[str, Any] = {}
    if "approvals_required" in data:
        n = data["approvals_required"]
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise doc.fail(f"must be a whole number of at least 1, not {n!r}", ("approvals_required",),
                           fix="production never moves without an approval")
        kw["approvals_required"] = n
    for name in ("allowed_approvers", "allowed_groups"):
        if name in data:
            kw[name] = _str_list(doc, data[name], (name,))
    if "required_scenarios" in data:
        kw["required_scenarios"] = _str_list(doc, data["required_scenarios"], ("required_scenarios",),
                                             choices=SCENARIOS, nonempty=True)
    if "accepted_backends" in data:
        kw["accepted_backends"] = _str_list(doc, data["accepted_backends"], ("accepted_backends",),
                                            choices=BACKENDS, nonempty=True)
    gp = _gate_policy()
    for name, parse in (("windows", gp.parse_window), ("freeze", gp.parse_freeze)):
        if name in data:
            values = _str_list(doc, data[name], (name,))
            for i, v in enumerate(values):
                try:
                    parse(v, name)
                except EdgeCIError as e:
                    raise doc.fail(e.message, (name, str(i)), fix=e.fix) from None
            kw[name] = values
    if "require_signed_production" in data:
        v = data["require_signed_production"]
        if not isinstance(v, bool):
            raise doc.fail(f"must be true or false, not {v!r}", ("require_signed_production",))
        kw["require_signed_production"] = v
    production = ProductionKey()
    if "production" in data:
        prod = data["production"]
        if not isinstance(prod, dict):
            raise doc.fail("must be a mapping with gpg_key and gpg_homedir", ("production",))
        _unknown(doc, prod, PRODUCTION_KEYS, ("production",))
        production = ProductionKey(
            gpg_key=_str(doc, prod["gpg_key"], ("production", "gpg_key")) if "gpg_key" in prod else "",
            gpg_homedir=_str(doc, prod["gpg_homedir"], ("production", "gpg_homedir")) if "gpg_homedir" in prod
            else "",
        )
    settings = Settings(**kw)
    if settings.require_signed_production and not production.gpg_key:
        raise doc.fail("production must be signed but production.gpg_key is not set",
                       ("require_signed_production",) if "require_signed_production" in data else (),
                       line=None if "require_signed_production" in data else 1,
                       fix="set production.gpg_key (and gpg_homedir), or require_signed_production: false")
    return TrustPolicy(source, keys, settings, production, SCHEMA, dict(doc.lines))


def load_policy(path: str | os.PathLike[str] = DEFAULT_PATH) -> TrustPolicy:
    """The trust policy file on this (production) host; ConfigError (exit 2) with file:line when wrong."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("trust policy not found", where=str(p),
                          fix="create it on the production host (see docs/trust.md) or pass --policy FILE") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read the trust policy: {getattr(e, 'strerror', None) or e}", where=str(p)) from None
    return parse_policy(text, str(p), base=p.resolve().parent)


def check_production_key(policy: TrustPolicy) -> str:
    """The fingerprint of production's GPG signing key, found in its homedir; ConfigError naming the
    trust policy's line when the secret key is not there."""
    from edgeci.tools import gpg

    key, home = policy.production.gpg_key, policy.production.gpg_homedir
    if not key:
        raise ConfigError("the trust policy names no production GPG key", where=policy.where("production"),
                          fix="set production.gpg_key and production.gpg_homedir")
    try:
        fpr = str(gpg.fingerprint(key, home or None, secret=True))
    except ConfigError as e:
        raise ConfigError(e.message, where=policy.where("production", "gpg_key"),
                          fix="import the key there (gpg --import) or fix production.gpg_key / "
                              "production.gpg_homedir in the trust policy") from None
    return fpr
