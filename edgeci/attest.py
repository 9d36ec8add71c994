"""The candidate's evidence as the pipeline produces and production checks it.

compose signs its provenance, boot-test its result, each approver an approval: DSSE envelopes of in-toto
statements about the commit checksum, collected in build/<bp>/<arch>/evidence.json (the bundle travels with
the build directory, as CI artifacts do). Promote verifies the bundle against the production host's trust
policy, never against the record, and publishes it beside the production repo (<repo>/edgeci-evidence/) so
`edgeci verify` can check any release later without CI. The formats and signatures are edgeci.evidence's;
the trust policy is edgeci.trust's.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeci.errors import EvidenceError, KeyFileError, VerificationError
from edgeci.record import now_iso

if TYPE_CHECKING:
    from edgeci.config import Config
    from edgeci.evidence import Bundle, ChainResult
    from edgeci.record import BuildRecord
    from edgeci.trust import TrustPolicy

BUNDLE_NAME = "evidence.json"
PUBLISHED_DIR = "edgeci-evidence"  # beside objects/ and refs/ in the production repo directory
DEMO_DIR = "trust"  # <build>/trust: the demo trust policy and keys of the embedded default
SYSTEM_POLICY = "/etc/edgeci/trust.yaml"
# CI identities of the job that signs: the builder of a statement
BUILDER_ENV = ("CI_JOB_URL", "BUILD_URL")
INVOCATION_ENV = ("CI_PIPELINE_ID", "BUILD_TAG")


def bundle_path(record_path: Path) -> Path:
    """The evidence bundle beside a build record."""
    return record_path.parent / BUNDLE_NAME


def builder(env: Mapping[str, str] | None = None) -> tuple[str, str]:
    """(builder id, invocation id): the CI job URL and pipeline/build id, or ("local", "")."""
    env = os.environ if env is None else env
    job = next((env[k] for k in BUILDER_ENV if env.get(k)), "local")
    inv = next((env[k] for k in INVOCATION_ENV if env.get(k)), "")
    return job, inv


def signing_key(role: str, cfg: Config | None = None, env: Mapping[str, str] | None = None) -> Any:
    """The role's signing key from EDGECI_<ROLE>_KEY; for the embedded default's demo production, the demo key
    'edgeci run' made under <build>/trust/keys; else None (the stage then runs unsigned and says so: promote
    will refuse the candidate). A set variable naming a bad file is an error (KeyFileError, exit 2)."""
    from edgeci.evidence import env_var, load_signing_key

    env = os.environ if env is None else env
    if env.get(env_var(role)):
        return load_signing_key(role, env=env)
    if cfg is not None and is_demo_production(cfg):
        demo = demo_dir(cfg) / "keys" / f"{role}.key"
        if demo.is_file():
            return load_signing_key(role, demo)
    return None


def _load_or_new(path: Path, checksum: str) -> Bundle:
    from edgeci.evidence import Bundle, load_bundle

    if path.is_file():
        try:
            bundle = load_bundle(path)
        except EvidenceError:
            bundle = None
        if bundle is not None and bundle.checksum == checksum:
            return bundle
    return Bundle(checksum)


def _add(path: Path, checksum: str, envelope: Mapping[str, Any], *, fresh: bool = False,
         replace_type: str | None = None) -> Path:
    from edgeci.evidence import Bundle, write_bundle
    from edgeci.evidence.dsse import peek

    bundle = Bundle(checksum) if fresh else _load_or_new(path, checksum)
    if replace_type:  # a re-run of a stage replaces its own statement, never another role's
        kept = []
        for env in bundle.envelopes:
            try:
                same = peek(env).predicate_type == replace_type
            except VerificationError:
                same = False
            if not same:
                kept.append(env)
        bundle.envelopes = kept
    bundle.add(envelope)
    return write_bundle(path, bundle)


def _subjects(rec: BuildRecord, default_ref: str) -> tuple[str, list[Any]]:
    from edgeci.evidence import subjects
    from edgeci.evidence.statement import image_mode_subjects

    cand = rec.candidate(default_ref)
    if (rec.get("compose") or {}).get("kind") == "image":  # image mode: the image digest is the subject
        return cand.checksum, image_mode_subjects(cand.checksum, cand.ref)
    return cand.checksum, subjects(cand.checksum, cand.ref, cand.image_digest or None, cand.blueprint)


# -- signing, stage by stage ------------------------------------------------------------------------

def sign_compose(rec: BuildRecord, default_ref: str, *, blueprint_path: str, blueprint_sha256: str,
                 checks_path: str, checks_sha256: str, change_authors: Sequence[str], key: Any,
                 variables: Mapping[str, str] | None = None, authors_unknown: str = "",
                 env: Mapping[str, str] | None = None) -> Path:
    """The compose provenance (SLSA v1) of the record's candidate, signed; starts the candidate's bundle."""
    from edgeci.evidence import ComposeProvenance, sign

    compose = rec.section("compose")
    bp = rec.get("blueprint") or {}
    job, inv = builder(env)
    prov = ComposeProvenance(
        blueprint_path=blueprint_path, blueprint_sha256=blueprint_sha256, git_commit=str(bp.get("git_sha") or ""),
        ref=rec.ref(default_ref), version=str(bp.get("version") or ""),
        composer_backend=str(compose.get("backend") or ""), compose_id=str(compose.get("id") or ""),
        parent=str(compose.get("parent") or ""), checks_path=checks_path, checks_sha256=checks_sha256,
        change_authors=tuple(sorted({a for a in change_authors if a})), authors_unknown=authors_unknown,
        variables=dict(variables or {}),
        builder_id=job, invocation_id=inv,
        finished_on=now_iso())
    checksum, subj = _subjects(rec, default_ref)
    return _add(bundle_path(rec.path), checksum, sign(prov.statement(subj), key), fresh=True)


def compose_evidence(cfg: Config, rec: BuildRecord, name: str, arch: str, *, blueprint_file: Path,
                     checks_file: Path | None, key: Any, variables: Mapping[str, str] | None = None) -> Path:
    """Sign the compose of the record's candidate: the blueprint (a template, when it has ${VAR}s) and checks
    file as built (path relative to the project, sha256), each template variable by the sha256 of its value
    (never the value), and every change author the gate will refuse as an approver."""
    from edgeci.approvals import SourceContext, gather
    from edgeci.oci import sha256_file

    # the same people the gate refuses as approvers, by the same rule (approvals.gather)
    found = gather("local", SourceContext(cfg, rec.path.parent, blueprint_file), rec.candidate(cfg.ref(name, arch)))
    authors = [i for person in found.people for i in person.identities if i]

    def rel(path: Path) -> str:
        try:
            return str(path.resolve().relative_to(cfg.root.resolve()))
        except ValueError:
            return str(path)

    checks = checks_file if checks_file is not None and checks_file.is_file() else None
    return sign_compose(rec, cfg.ref(name, arch), blueprint_path=rel(blueprint_file),
                        blueprint_sha256=sha256_file(blueprint_file), checks_path=rel(checks) if checks else "",
                        checks_sha256=sha256_file(checks) if checks else "", change_authors=authors, key=key,
                        variables=variables, authors_unknown=found.authors_unknown or "")


def sign_boot_test(rec: BuildRecord, default_ref: str, *, checks_sha256: str, key: Any,
                   env: Mapping[str, str] | None = None) -> Path:
    """The boot test's result (backend, every scenario and check) for the candidate, signed, into its bundle."""
    from edgeci.evidence import BootTestResult, ScenarioResult, sign
    from edgeci.evidence.predicates import BOOT_TEST

    boot = rec.section("boot_test")
    scenarios = {}
    for name, s in (boot.get("scenarios") or {}).items():
        s = s or {}
        checks = {str(c.get("name")): str(c.get("outcome")) for c in s.get("checks") or [] if c.get("name")}
        scenarios[str(name)] = ScenarioResult(str(s.get("outcome") or ""), checks, str(s.get("reason") or ""))
    job, _ = builder(env)
    result = BootTestResult(backend=str(boot.get("backend") or ""), scenarios=scenarios,
                            passed=boot.get("status") == "passed", checks_sha256=checks_sha256,
                            stage_url=str((rec.get("stage") or {}).get("url") or ""), builder_id=job,
                            time=now_iso())
    checksum, subj = _subjects(rec, default_ref)
    return _add(bundle_path(rec.path), checksum, sign(result.statement(subj), key), replace_type=BOOT_TEST)


def sign_approval(rec: BuildRecord, default_ref: str, *, approver: str, comment: str, key: Any,
                  source: str = "local", source_ref: str = "") -> Path:
    """One approver's signed approval of exactly the candidate's checksum, into its bundle."""
    from edgeci.evidence import ApprovalDecision, sign

    checksum, subj = _subjects(rec, default_ref)
    decision = ApprovalDecision(approver=approver, checksum=checksum, time=now_iso(), source=source,
                                source_ref=source_ref, comment=comment)
    return _add(bundle_path(rec.path), checksum, sign(decision.statement(subj), key))


# -- the trust policy -------------------------------------------------------------------------------

@dataclass
class Policies:
    """The trust policies a promotion must satisfy (each one in full), and where they came from."""

    policies: list[TrustPolicy]
    demo: bool = False

    @property
    def sources(self) -> str:
        return ", ".join(p.source for p in self.policies)


def demo_dir(cfg: Config) -> Path:
    return cfg.build_dir / DEMO_DIR


def is_demo_production(cfg: Config) -> bool:
    """The embedded default's production: a repo directory inside this project's build directory, and local
    approvals. Only there does a trust policy inside the build directory count (nothing else trusts it)."""
    if cfg.gate.source != "local":
        return False
    repo = cfg.path(cfg.prod.repo).resolve()
    build = cfg.build_dir.resolve()
    return repo == build or build in repo.parents


def load_policies(cfg: Config, explicit: str | None, *, system: str = SYSTEM_POLICY) -> Policies:
    """What production trusts: the host's own policy (/etc/edgeci/trust.yaml) whenever it exists, plus the
    one given with --policy (both must pass); without either, the demo policy of the embedded default.
    The project's edgeci.yaml, the environment and --set never choose or weaken it."""
    from edgeci.errors import ConfigError
    from edgeci.trust import load_policy

    policies = []
    if os.path.isfile(system):
        policies.append(load_policy(system))
    if explicit:
        policies.append(load_policy(explicit))
    if policies:
        return Policies(policies)
    demo = demo_dir(cfg) / "trust.yaml"
    if is_demo_production(cfg) and demo.is_file():
        return Policies([load_policy(demo)], demo=True)
    raise ConfigError("no trust policy on this production host", where=system,
                      fix="create it (docs/trust.md; 'edgeci keys init ROLE' makes the keys) or pass --policy FILE")


def ensure_demo_trust(cfg: Config, *, backends: Sequence[str]) -> Path:
    """The embedded default's demo keys and trust policy under <build>/trust (made once, kept after; a key file
    that does not load is made again); returns the policy's path. signing_key() finds the keys there."""
    from edgeci.evidence import SigningKey, load_signing_key, write_key_pair
    from edgeci.record import atomic_write_text

    d = demo_dir(cfg)
    keys = d / "keys"
    for role in ("compose", "boot-test", "approver"):
        usable = (keys / f"{role}.pub").is_file()
        if usable:
            try:
                load_signing_key(role, keys / f"{role}.key")
            except KeyFileError:
                usable = False
        if not usable:
            write_key_pair(SigningKey.generate(role, name=f"demo-{role}"), keys, force=True)
    policy = d / "trust.yaml"
    text = "\n".join([
        "# The embedded default's demo trust policy, made by 'edgeci run' with demo keys under keys/.",
        "# A real production host keeps its own in /etc/edgeci/trust.yaml (docs/trust.md).",
        "schema: 1",
        "keys:",
        "  compose: [{name: demo-compose, file: keys/compose.pub}]",
        "  boot-test: [{name: demo-boot-test, file: keys/boot-test.pub}]",
        "  approver: [{name: demo-approver, file: keys/approver.pub}]",
        "approvals_required: 1",
        "required_scenarios: [install, upgrade, rollback]",
        f"accepted_backends: [{', '.join(backends)}]",
        "require_signed_production: false",
        "",
    ])
    if not policy.is_file() or policy.read_text(encoding="utf-8") != text:
        atomic_write_text(policy, text)
    return policy


# -- verification -----------------------------------------------------------------------------------

def load_candidate_bundle(rec: BuildRecord) -> Bundle:
    """The candidate's bundle; a missing or unreadable one is a missing link (VerificationError, exit 1)."""
    from edgeci.evidence import load_bundle

    path = bundle_path(rec.path)
    try:
        return load_bundle(path)
    except EvidenceError as e:
        raise VerificationError(f"evidence: {e.message}", code="bundle", where=str(path),
                                fix="run compose and boot-test with their signing keys (EDGECI_COMPOSE_KEY, "
                                    "EDGECI_BOOT_TEST_KEY) and approve with EDGECI_APPROVER_KEY") from None


@dataclass
class Verification:
    """The chain checked against every trust policy: one result per policy (each with the stricter of that
    policy and the project's settings), and the lines where the project's settings differ from a policy."""

    results: list[ChainResult]
    settings: list[Any]  # trust.Effective, one per policy
    differences: list[str]

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def approvals_required(self) -> int:
        return max(s.approvals_required for s in self.settings)

    @property
    def signing_required(self) -> bool:
        return any(s.require_signed_production for s in self.settings)

    def first_failure(self) -> VerificationError | None:
        for r in self.results:
            try:
                r.raise_if_failed()
            except VerificationError as e:
                return e
        return None


def verify(policies: Policies, bundle: Bundle, checksum: str, *, project: Mapping[str, Any] | None = None,
           image_digest: str | None = None, external_approvals: Iterable[Any] = (),
           now: datetime | None = None, first_release: bool = False) -> Verification:
    """The chain checked against every policy. Never raises for a broken link: callers decide (promote refuses,
    verify reports)."""
    from edgeci.evidence import verify_chain
    from edgeci.trust import effective

    out = Verification([], [], [])
    externals = list(external_approvals)
    for policy in policies.policies:
        eff, d = effective(policy, project)
        out.settings.append(eff)
        out.differences += [f"{policy.source}: {line}" for line in d]
        out.results.append(verify_chain(bundle, policy, checksum, image_digest=image_digest, now=now, settings=eff,
                                        external_approvals=externals, first_release=first_release))
    return out


def production_key(policies: Policies) -> tuple[str, str]:
    """(GPG key, homedir) production is signed with per the trust policies ('' when none names one)."""
    for p in policies.policies:
        if p.production.gpg_key:
            return p.production.gpg_key, p.production.gpg_homedir
    return "", ""


# -- publication ------------------------------------------------------------------------------------

def published_path(repo: Path, checksum: str) -> Path:
    return repo / PUBLISHED_DIR / f"{checksum}.json"


def publish(repo: Path, bundle: Bundle) -> Path:
    """The release's bundle beside the production repo (written before the ref moves: a bundle whose commit
    never reached production is harmless, a released commit without its bundle would not be)."""
    from edgeci.evidence import write_bundle

    return write_bundle(published_path(repo, bundle.checksum), bundle)


def fetch_text(url: str, *, binary: bool = False, timeout: float = 30) -> str | None:
    """The body at `url` ('' for a binary object that exists), None on 404; EvidenceError otherwise."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            data = resp.read()
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return None
        raise EvidenceError(f"HTTP {e.code} {e.reason}", where=url) from None
    except (urllib.error.URLError, OSError) as e:
        raise EvidenceError(f"cannot reach production: {getattr(e, 'reason', e)}", where=url) from None
    return "" if binary else data.decode("utf-8", errors="replace")


def fetch_published(repo: str, checksum: str, *, timeout: float = 30) -> Bundle:
    """A release's published bundle from a production repo directory or URL (EvidenceError, exit 2, when it
    cannot be read; VerificationError, exit 1, when production publishes none for that commit)."""
    from edgeci.evidence import Bundle, load_bundle

    if "://" not in repo:
        path = published_path(Path(repo), checksum)
        if not path.is_file():
            raise VerificationError(f"production publishes no evidence for {checksum[:12]}", code="bundle",
                                    where=str(path), fix="promote it with edgeci (it publishes the bundle)")
        return load_bundle(path)
    url = f"{repo.rstrip('/')}/{PUBLISHED_DIR}/{checksum}.json"
    text = fetch_text(url, timeout=timeout)
    if text is None:
        raise VerificationError(f"production publishes no evidence for {checksum[:12]}", code="bundle",
                                where=url, fix="promote it with edgeci (it publishes the bundle)")
    try:
        data = json.loads(text)
    except ValueError as e:
        raise EvidenceError(f"the evidence bundle is not JSON: {e}", where=url) from None
    if not isinstance(data, dict) or not isinstance(data.get("envelopes"), list):
        raise EvidenceError("the evidence bundle is not an edgeci bundle", where=url)
    return Bundle(str(data.get("checksum") or ""), [e for e in data["envelopes"] if isinstance(e, dict)])


def signers(bundle: Bundle, policies: Policies) -> list[dict[str, str]]:
    """Who signed what, when — for the report: one row per envelope with role, key, predicate and time."""
    from edgeci.evidence.dsse import peek, verify_signed
    from edgeci.evidence.predicates import ROLE_OF, parse_predicate

    rows = []
    keys = [k for p in policies.policies for k in p.keys]
    for env in bundle.envelopes:
        try:
            stmt = peek(env)
            role = ROLE_OF.get(stmt.predicate_type, "?")
            pred: Any = parse_predicate(stmt)
        except (ValueError, EvidenceError, VerificationError):
            rows.append({"role": "?", "key": "?", "what": "unreadable envelope", "time": "", "verified": "no"})
            continue
        if not keys:  # nothing here to check against: say which key signed, unchecked
            sigs = env.get("signatures") or [{}]
            key, ok = str((sigs[0] or {}).get("keyid", "?"))[:12], ""
        else:
            try:
                key, ok = verify_signed(env, keys, role).key.label, "yes"
            except (VerificationError, EvidenceError) as e:
                key, ok = "?", f"no: {getattr(e, 'message', e)}"
        what = {"compose": "compose provenance", "boot-test": "boot-test result",
                "approver": "approval"}.get(role, role)
        who = getattr(pred, "approver", "")
        when = getattr(pred, "finished_on", "") or getattr(pred, "time", "")
        rows.append({"role": role, "key": key, "what": what + (f" by {who}" if who else ""), "time": when,
                     "verified": ok})
    return rows
