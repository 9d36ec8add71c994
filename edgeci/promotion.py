"""The promotion transaction: pinned promotion to the production ostree repo, and rollback by a new commit.

Under an exclusive lock on the repo: gate check, `pull --mirror --depth=1 edgeci-stage CHECKSUM` (a pull by
checksum moves no ref; or `pull-local --untrusted` from the pushed image, by digest), verify, sign, static
deltas, only then the ref, summary, releases log, prune.
A kill at any moment leaves the ref at the old or the new commit; running again converges.
"""

from __future__ import annotations

import base64
import errno
import os
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edgeci import policy
from edgeci.errors import PromotionError, PromotionRefused, ToolError
from edgeci.production import (
    RELEASES_NAME,
    ProdSettings,
    Production,
    ReleasesLog,
    read_production,
    release_version,
    repo_lock,
    signed_production,
)
from edgeci.record import now_iso
from edgeci.tools import ostree
from edgeci.version import next_version

STAGE_REMOTE = "edgeci-stage"


# Releases within retention are pinned by refs under this remote name: `ostree prune --refs-only`
# honours them and `summary -u` does not publish them (refs/remotes/ are not in the summary).
KEEP_REMOTE = "edgeci-keep"


SCRATCH_PREFIX = ".edgeci-image-"  # next to the repo (same filesystem), removed by the next run if killed


STEPS = ("gate", "pull", "verify", "sign", "deltas", "evidence", "ref", "summary", "log", "prune")


ROLLBACK_STEPS = ("commit", "sign", "deltas", "ref", "summary", "log", "prune")


# (step, phase "begin" | "end", detail) — the stage glue prints and the kill tests pause on it.
StepCallback = Callable[[str, str, str], None]


# (image reference by digest, scratch directory) -> the ostree repo extracted from that exact image.
ImageFetcher = Callable[[str, Path], Path]
# (production repo) -> a step detail: writes what is published with the release before its ref moves
Publisher = Callable[[Path], str]


@dataclass
class PromoteRequest:
    """The candidate to promote (its ref, checksum, stage from the record) and the decision the gate step checks
    (built by the stage glue from the verified evidence)."""

    ref: str
    checksum: str
    version: str | None
    parent: str | None
    stage_url: str
    gate: Mapping[str, Any]  # {checksum, decision, status, approvals}: what the evidence proved
    blueprint: str = ""
    arch: str = ""
    image_digest: str = ""
    image_ref: str = ""  # the pushed image by digest (push.image_ref), for prod.source = image
    packages: list[Any] = field(default_factory=list)
    blueprint_info: Mapping[str, Any] = field(default_factory=dict)
    approvals_required: int = 1
    allow_fork: bool = False
    windows: list[str] = field(default_factory=list)
    freeze: list[str] = field(default_factory=list)


@dataclass
class StepResult:
    name: str
    detail: str
    seconds: float


@dataclass
class PromoteResult:
    repo: str
    ref: str
    checksum: str
    previous: str | None
    version: str | None
    deltas: list[str] = field(default_factory=list)
    signed: bool = False
    time: str = ""
    noop: bool = False
    steps: list[StepResult] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)
    rollback_of: str | None = None

    def as_record(self) -> dict[str, Any]:
        return {"repo": self.repo, "ref": self.ref, "checksum": self.checksum, "previous": self.previous,
                "version": self.version, "deltas": self.deltas, "signed": self.signed, "time": self.time}


def _b64(checksum: str) -> str:
    return base64.b64encode(bytes.fromhex(checksum)).decode().rstrip("=").replace("/", "_")


def delta_dir(repo: Path, from_: str, to: str) -> Path:
    """Where ostree keeps the FROM→TO static delta (deltas/XX/REST-TO, modified base64)."""
    f = _b64(from_)
    return repo / "deltas" / f[:2] / f"{f[2:]}-{_b64(to)}"


def _now() -> datetime:
    return datetime.now(UTC)


class _Steps:
    """Announces step boundaries and times them."""

    def __init__(self, on_step: StepCallback | None) -> None:
        self.on_step = on_step
        self.done: list[StepResult] = []
        self._name = ""
        self._t0 = 0.0

    def begin(self, name: str) -> None:
        self._name, self._t0 = name, time.monotonic()
        if self.on_step:
            self.on_step(name, "begin", "")

    def end(self, detail: str) -> None:
        self.done.append(StepResult(self._name, detail, time.monotonic() - self._t0))
        if self.on_step:
            self.on_step(self._name, "end", detail)


def check_gate(req: PromoteRequest) -> str:
    """Step 1: refuse unless the decision approves exactly this checksum; returns the approvers."""
    gate = req.gate or {}
    if not gate:
        raise PromotionRefused("the gate has not run for this candidate", fix="run 'edgeci gate' first")
    if gate.get("checksum") != req.checksum:
        raise PromotionRefused(f"the gate decided about {policy.short(gate.get('checksum'))}, not the candidate "
                               f"{policy.short(req.checksum)}", fix="run 'edgeci gate' again")
    if gate.get("decision") != policy.APPROVED or gate.get("status", policy.PASSED) != policy.PASSED:
        raise PromotionRefused(f"the gate {gate.get('decision', 'did not approve')} {policy.short(req.checksum)}",
                               fix="see 'edgeci gate' for the rules that failed")
    approvals = gate.get("approvals") or []
    bound = [a for a in approvals if policy.names_checksum(str(a.get("checksum", "")), req.checksum)]
    if len(bound) != len(approvals) or len({str(a.get("user", "")).casefold() for a in bound}) < req.approvals_required:
        raise PromotionRefused(f"the gate's approvals do not all name {policy.short(req.checksum)} "
                               f"(or fewer than {req.approvals_required})", fix="run 'edgeci gate' again")
    return ", ".join(str(a.get("user")) for a in bound) or "(no approvals required)"


def _recheck(req: PromoteRequest, production: Production, now: datetime) -> None:
    """Under the lock: production may have moved since the gate ran, and time may have left the window."""
    for rule in (policy.check_version(req.version, production),
                 policy.check_parent(req.parent, production, req.allow_fork),
                 policy.check_window(req.windows, now), policy.check_freeze(req.freeze, now)):
        if rule.outcome != policy.PASSED:
            raise PromotionRefused(f"{rule.name}: {rule.reason}", where=f"production ref {production.ref}")


def _ensure_stage_remote(repo: Path, url: str) -> None:
    if not url:
        raise PromotionError("the record's stage section has no url", fix="re-run 'edgeci stage'")
    if ostree.remote_url(repo, STAGE_REMOTE) != url:
        ostree.remote_add(repo, STAGE_REMOTE, url)


def _stage_reachable(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/config", timeout=15) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _pull(repo: Path, req: PromoteRequest) -> str:
    _ensure_stage_remote(repo, req.stage_url)
    try:
        r = ostree.pull(repo, STAGE_REMOTE, [req.checksum], mirror=True, depth=1)
    except ToolError as e:
        text = e.stderr or e.message
        if no_space(e):
            raise  # production's disk, not the stage: promote() says so
        if "Corrupted" in text or "checksum expected" in text:
            raise PromotionRefused(
                f"the stage's copy of {policy.short(req.checksum)} no longer matches its checksum "
                f"(an object changed after the boot test): {text.strip().splitlines()[-1]}",
                where=req.stage_url, fix="re-stage and boot-test the candidate; production is unchanged") from None
        if "404" in text and _stage_reachable(req.stage_url):
            raise PromotionRefused(
                f"the stage no longer serves the boot-tested commit {policy.short(req.checksum)}",
                where=req.stage_url, fix="re-stage and boot-test the candidate; production is unchanged") from None
        raise PromotionError(f"cannot pull {policy.short(req.checksum)} from the stage: "
                             f"{text.strip().splitlines()[-1] if text.strip() else e.message}",
                             where=req.stage_url, fix="check that the stage is up (edgeci stage)") from None
    return r.stdout.strip().splitlines()[-1] if r.stdout.strip() else "pulled"


def _pull_image(repo: Path, req: PromoteRequest, fetch: ImageFetcher | None) -> str:
    """The commit out of the pushed image (pinned by its manifest digest), verified object by object."""
    if fetch is None:
        raise PromotionError("prod.source is 'image' but no image fetcher was given")
    if "@sha256:" not in req.image_ref:
        raise PromotionError(f"the record's image reference '{req.image_ref}' is not pinned by digest",
                             fix="re-run 'edgeci push' (it records destination@digest)")
    import tempfile

    with tempfile.TemporaryDirectory(dir=repo.parent, prefix=SCRATCH_PREFIX) as tmp:
        src = fetch(req.image_ref, Path(tmp))
        try:
            ostree.pull_local(repo, src, [req.checksum], depth=1, untrusted=True)
        except ToolError as e:
            text = (e.stderr or e.message).strip()
            if "No such metadata object" in text or "Corrupted" in text or "checksum expected" in text:
                raise PromotionRefused(
                    f"the image {req.image_ref} does not hold the boot-tested commit {policy.short(req.checksum)} "
                    f"intact: {text.splitlines()[-1] if text else e.message}",
                    fix="re-run push, stage and boot-test; production is unchanged") from None
            raise
    return f"imported from {req.image_ref}"


def _verify(settings: ProdSettings, checksum: str, previous: str | None) -> str:
    repo = settings.repo
    if not ostree.has_commit(repo, checksum):
        state = "partial" if ostree.is_partial(repo, checksum) else "missing"
        raise PromotionError(f"commit {checksum} is {state} in production after the pull", where=str(repo),
                             fix="re-run the promotion")
    since = previous if (settings.fsck != "full" and previous and ostree.has_commit(repo, previous)) else None
    n = ostree.fsck_commit(repo, checksum, since=since)
    scope = f"that differ from {policy.short(since)}" if since else "of the commit"
    return f"complete; {n} objects {scope} verified"


def _sign(settings: ProdSettings, checksum: str) -> tuple[bool, str]:
    repo = settings.repo
    done = []
    if settings.gpg_key:
        from edgeci.tools import gpg

        home = settings.gpg_homedir or None
        fpr = gpg.fingerprint(settings.gpg_key, home)
        present = {k[-16:] for k in ostree.signature_key_ids(repo, checksum, home)}
        if fpr[-16:] not in present:
            ostree.gpg_sign(repo, checksum, fpr, home)
            done.append(f"GPG {fpr[-16:]}")
        else:
            done.append(f"GPG {fpr[-16:]} (already signed)")
    if settings.ed25519_key:
        if ostree.sign_supported():
            ostree.sign_ed25519(repo, checksum, settings.ed25519_key)
            done.append("ed25519")
        elif not settings.gpg_key:
            raise PromotionError("prod.sign_ed25519_key is set but this ostree build cannot sign ed25519",
                                 where="prod.sign_ed25519_key",
                                 fix="configure prod.gpg_key (GPG works with every ostree build)")
        else:
            done.append("ed25519 skipped (not supported by this ostree)")
    if not done:
        return False, "unsigned (prod.gpg_key is not set)"
    return True, "signed: " + ", ".join(done)


def _delta_sources(settings: ProdSettings, target: str, previous: str | None,
                   releases: Sequence[Mapping[str, Any]]) -> list[str]:
    repo = settings.repo
    sources: list[str] = []
    if previous and previous != target and ostree.has_commit(repo, previous):
        sources.append(previous)
    taken = 0
    for r in reversed(releases):
        if taken >= settings.delta_from_releases:
            break
        c = str(r.get("checksum", ""))
        if c == target or not policy.CHECKSUM_RE.match(c):
            continue
        taken += 1
        if c not in sources and ostree.has_commit(repo, c):
            sources.append(c)
    return sources


def _deltas(settings: ProdSettings, target: str, sources: Sequence[str]) -> list[str]:
    # Always (re)generated before the ref moves: a delta half-written by a killed run is overwritten.
    out = []
    for src in sources:
        ostree.static_delta_generate(settings.repo, target, from_=src, extra=settings.delta_args)
        out.append(f"{src}-{target}")
    return out


def _summary(settings: ProdSettings) -> str:
    if settings.gpg_key:
        from edgeci.tools import gpg

        fpr = gpg.fingerprint(settings.gpg_key, settings.gpg_homedir or None)
        ostree.summary_update(settings.repo, gpg_key=fpr, gpg_homedir=settings.gpg_homedir or None)
        return f"summary updated, signed by {fpr[-16:]}"
    ostree.summary_update(settings.repo)
    return "summary updated (unsigned)"


def _keep_ref(checksum: str) -> str:
    return f"{KEEP_REMOTE}:release/{checksum}"


def _keep_refs_on_disk(repo: Path) -> set[str]:
    d = repo / "refs" / "remotes" / KEEP_REMOTE / "release"
    return {p.name for p in d.iterdir()} if d.is_dir() else set()


def retained(settings: ProdSettings, releases: Sequence[Mapping[str, Any]]) -> set[str]:
    """Checksums of the last `retention` releases of every ref in the log."""
    keep_n = max(settings.retention, 1)
    by_ref: dict[str, list[str]] = {}
    for r in releases:
        by_ref.setdefault(str(r.get("ref")), []).append(str(r.get("checksum")))
    out: set[str] = set()
    for checksums in by_ref.values():
        out.update(checksums[-keep_n:])
    return out


def _prune(settings: ProdSettings) -> tuple[list[str], str]:
    """Keep the last K releases of each ref (pinned by keep refs) and every ref tip; delete the rest."""
    repo = settings.repo
    releases = ReleasesLog(repo).load()
    keep = {c for c in retained(settings, releases) if ostree.has_commit(repo, c)}
    have = _keep_refs_on_disk(repo)
    for c in sorted(keep - have):
        ostree.set_ref(repo, _keep_ref(c), c)
    dropped = sorted(have - keep)
    for c in dropped:
        ostree.delete_ref(repo, _keep_ref(c))
    managed = {str(r.get("ref")) for r in releases}
    out_of_retention = {str(r.get("checksum")) for r in releases} - keep
    to_delete = [c for c in out_of_retention if (repo / "objects" / c[:2] / f"{c[2:]}.commit").exists()]
    if not to_delete:
        return [], f"nothing to prune ({len(keep)} releases kept, retention {settings.retention})"
    # Depth 0 for edgeci's refs (kept releases are pinned by keep refs); refs edgeci does not manage keep
    # their whole history.
    extra = []
    for ref in ostree.refs(repo):
        if ":" not in ref and ref not in managed:
            extra.append(f"--retain-branch-depth={ref}=-1")
    ostree.cli(repo, "prune", "--refs-only", "--depth=0", *extra)
    gone = [c for c in to_delete if not (repo / "objects" / c[:2] / f"{c[2:]}.commit").exists()]
    return gone, f"pruned {len(gone)} release(s) beyond retention {settings.retention}; kept {len(keep)}"


def _entry(req: PromoteRequest | None, ref: str, checksum: str, version: str | None, previous: str | None,
           approvers: Sequence[str], signed: bool, deltas: Sequence[str], **extra: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "ref": ref, "version": version, "checksum": checksum, "previous": previous,
        "approvers": list(approvers), "time": now_iso(), "signed": signed,
        "deltas_from": [d.split("-")[0] for d in deltas],
    }
    if req is not None:
        info = req.blueprint_info or {}
        entry.update({
            "blueprint": req.blueprint, "arch": req.arch, "image_digest": req.image_digest,
            "blueprint_git_sha": info.get("git_sha", ""), "blueprint_path": info.get("path", ""),
            "blueprint_sha256": info.get("sha256", ""), "packages": list(req.packages or []),
            # a templated blueprint's values by sha256 (never a value), and the checks file, for the next gate's diff
            "blueprint_variables": dict(info.get("variables") or {}),
            "template_sha256": info.get("template_sha256", "") or info.get("sha256", ""),
            "checks_sha256": info.get("checks_sha256", ""),
            "evidence": f"edgeci-evidence/{checksum}.json",
        })
    entry.update(extra)
    return entry


def preflight(settings: ProdSettings, ref: str) -> None:
    """Before anything is created or locked: the programs promotion needs, and a signed production stays signed
    (a promotion without a key would publish an unsigned commit and `summary -u` would drop summary.sig)."""
    from edgeci.tools.run import which

    which("ostree")
    if settings.gpg_key:
        which("gpg")
    if not settings.gpg_key and (settings.repo / "config").is_file():
        why = signed_production(settings.repo, ref)
        if why:
            raise PromotionError(f"production is signed ({why}) but no signing key is configured (prod.gpg_key is "
                                 "empty): it would get an unsigned commit and lose its summary signature",
                                 where=str(settings.repo),
                                 fix="configure prod.gpg_key (and prod.gpg_homedir) in edgeci.yaml; production is "
                                     "unchanged")


def no_space(e: BaseException) -> bool:
    """The disk is full (ENOSPC), from an ostree/gpg run or from edgeci's own writes."""
    if isinstance(e, OSError):
        return e.errno == errno.ENOSPC
    if isinstance(e, ToolError):
        return "No space left on device" in f"{e.stderr}\n{e.message}"
    return False


def disk_of(path: Path) -> str:
    """'the filesystem of PATH (mounted on M, N free)', for disk-full messages."""
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    mount = p
    while not os.path.ismount(mount) and mount != mount.parent:
        mount = mount.parent
    try:
        st = os.statvfs(p)
        free = f", {st.f_bavail * st.f_frsize // 1024} KiB free"
    except OSError:
        free = ""
    return f"the filesystem of {path} (mounted on {mount}{free})"


def _disk_full(steps: _Steps, repo: Path, ref: str, target: str, rerun: str) -> PromotionError:
    step = steps._name or "start"
    disk = disk_of(repo)
    if any(s.name == "ref" for s in steps.done):
        return PromotionError(f"disk full during '{step}': {ref} already points at {policy.short(target)} but the "
                              "summary and releases log are stale (clients may still see the previous release)",
                              where=disk, fix=f"free space there, then {rerun}: it finishes the remaining steps")
    return PromotionError(f"disk full during '{step}' (No space left on device); production is unchanged, its ref "
                          "still points at the previous release", where=disk,
                          fix=f"free space there (df -h {repo}), then {rerun}")


def plan(settings: ProdSettings, req: PromoteRequest) -> list[str]:
    """What `promote` would do, step by step (read-only: no lock, nothing written)."""
    state = read_production(settings, req.ref)
    cur = state.production.commit
    lines = []
    try:
        approvers = check_gate(req)
        lines.append(f"1 gate: approved for {req.checksum} by {approvers}")
    except PromotionRefused as e:
        lines.append(f"1 gate: REFUSE — {e.message}")
    if cur == req.checksum:
        lines.append(f"  production's {req.ref} already points at {req.checksum}: nothing to do")
        return lines
    if settings.source == "image":
        lines.append(f"2 pull: extract the ostree repo from {req.image_ref}, then ostree pull-local --untrusted "
                     f"--depth=1 EXTRACTED {req.checksum} (moves no ref)")
    else:
        lines.append(f"2 pull: ostree --repo={settings.repo} pull --mirror --depth=1 {STAGE_REMOTE} {req.checksum} "
                     f"(remote {STAGE_REMOTE} = {req.stage_url}; the pull moves no ref)")
    since = f"the objects that differ from {policy.short(cur)}" if cur and settings.fsck != "full" else "every object"
    lines.append(f"3 verify: no state/{req.checksum}.commitpartial; fsck of {since}")
    if settings.gpg_key:
        lines.append(f"4 sign: ostree gpg-sign {policy.short(req.checksum)} {settings.gpg_key}"
                     + (f" --gpg-homedir={settings.gpg_homedir}" if settings.gpg_homedir else ""))
    else:
        lines.append("4 sign: no key configured (prod.gpg_key): the commit stays unsigned")
    sources = []
    if cur:
        sources.append(cur)
    for r in reversed(state.releases[-settings.delta_from_releases:] if settings.delta_from_releases else []):
        c = str(r.get("checksum"))
        if c not in sources:
            sources.append(c)
    if sources:
        for s in sources:
            lines.append(f"5 deltas: ostree static-delta generate --from={s} --to={req.checksum} "
                         + " ".join(settings.delta_args))
    else:
        lines.append("5 deltas: none (first release: no earlier commit to delta from)")
    lines.append(f"6 ref: {req.ref}: {cur or '(new)'} -> {req.checksum}")
    lines.append("7 summary: ostree summary -u" + (f" --gpg-sign={settings.gpg_key}" if settings.gpg_key else ""))
    lines.append(f"8 log: append {req.version} to {settings.repo / RELEASES_NAME}; the record's promote section")
    all_releases = ReleasesLog(settings.repo).load() if (settings.repo / "config").is_file() else []
    future = [*all_releases, {"ref": req.ref, "checksum": req.checksum}]
    drop = [str(r.get("checksum")) for r in all_releases if str(r.get("checksum")) not in retained(settings, future)]
    lines.append(f"9 prune: keep the last {settings.retention} releases per ref"
                 + (f"; drop {', '.join(policy.short(c) for c in drop)}" if drop else "; nothing to drop"))
    return lines


def promote(settings: ProdSettings, req: PromoteRequest, *, on_step: StepCallback | None = None,
            now: Callable[[], datetime] = _now, fetch_image: ImageFetcher | None = None,
            publish: Publisher | None = None) -> PromoteResult:
    """Promote exactly req.checksum (see the module docstring). Same checksum again: a no-op. `publish(repo)`
    writes what must be served with the release (its evidence) after the deltas, before the ref moves."""
    if not policy.CHECKSUM_RE.match(req.checksum):
        raise PromotionError(f"'{req.checksum}' is not a commit checksum", fix="run 'edgeci compose' first")
    preflight(settings, req.ref)
    steps = _Steps(on_step)
    repo = settings.repo
    with repo_lock(repo, settings.lock_timeout):
        try:
            return _promote_locked(settings, req, steps, now, fetch_image, publish)
        except (OSError, ToolError) as e:
            if no_space(e):
                raise _disk_full(steps, repo, req.ref, req.checksum, "run 'edgeci promote' again") from None
            raise


def _promote_locked(settings: ProdSettings, req: PromoteRequest, steps: _Steps, now: Callable[[], datetime],
                    fetch_image: ImageFetcher | None, publish: Publisher | None = None) -> PromoteResult:
    """promote() under the production lock."""
    repo = settings.repo
    ostree.init(repo, "archive")
    for stale in repo.parent.glob(f"{SCRATCH_PREFIX}*"):  # left by a killed run; we hold the lock
        shutil.rmtree(stale, ignore_errors=True)
    log = ReleasesLog(repo)
    releases = log.for_ref(req.ref)
    current = ostree.rev_parse(repo, req.ref)
    last = releases[-1] if releases else None

    steps.begin("gate")
    approvers = check_gate(req)
    if current == req.checksum and last and last.get("checksum") == req.checksum:
        steps.end(f"{req.ref} already points at {req.checksum}: nothing to do")
        # a run killed after the log but before pruning left that undone: finish it (idempotent)
        steps.begin("prune")
        steps.end(_prune(settings)[1])
        return PromoteResult(str(repo), req.ref, req.checksum, last.get("previous"), last.get("version"),
                             deltas=[f"{f}-{req.checksum}" for f in last.get("deltas_from", [])],
                             signed=bool(last.get("signed")), time=str(last.get("time", "")), noop=True,
                             steps=steps.done)
    resume = current == req.checksum  # a killed run already moved the ref: finish steps 7-9
    if resume:
        previous = str(last["checksum"]) if last else None
        version = req.version  # the blueprint's version; the commit's version metadata is the OS release
        steps.end(f"approved by {approvers}; {req.ref} already points at it: finishing summary, log, prune")
        signed = bool(settings.gpg_key) and bool(ostree.signature_key_ids(repo, req.checksum,
                                                                         settings.gpg_homedir or None))
        deltas = [f"{p}-{req.checksum}" for p in _delta_sources(settings, req.checksum, previous, releases)
                  if (delta_dir(repo, p, req.checksum) / "superblock").is_file()]
    else:
        previous = current
        prod_version = release_version(releases, current)  # from the releases log, never commit metadata
        production = Production(req.ref, current, prod_version)
        _recheck(req, production, now())
        steps.end(f"approved by {approvers}; {req.version} over production "
                  f"{prod_version or '(none)'} at {policy.short(current)}")

        steps.begin("pull")
        detail = _pull_image(repo, req, fetch_image) if settings.source == "image" else _pull(repo, req)
        steps.end(detail)

        steps.begin("verify")
        detail = _verify(settings, req.checksum, previous)
        version = req.version
        steps.end(detail)

        steps.begin("sign")
        signed, detail = _sign(settings, req.checksum)
        steps.end(detail)

        steps.begin("deltas")
        sources = _delta_sources(settings, req.checksum, previous, releases)
        deltas = _deltas(settings, req.checksum, sources)
        steps.end(f"{len(deltas)} static delta(s) to {policy.short(req.checksum)} from "
                  + (", ".join(policy.short(s) for s in sources) or "nothing (first release)"))

        if publish is not None:
            steps.begin("evidence")
            steps.end(publish(repo))

        steps.begin("ref")
        ostree.set_ref(repo, req.ref, req.checksum)
        steps.end(f"{req.ref}: {policy.short(previous)} -> {policy.short(req.checksum)}")

    steps.begin("summary")
    steps.end(_summary(settings))

    steps.begin("log")
    entry = _entry(req, req.ref, req.checksum, version, previous,
                   [str(a.get("user")) for a in (req.gate.get("approvals") or [])], signed, deltas)
    log.append(entry)
    steps.end(f"release {version} appended to {log.path.name}")

    steps.begin("prune")
    gone, detail = _prune(settings)
    steps.end(detail)

    return PromoteResult(str(repo), req.ref, req.checksum, previous, version, deltas=deltas, signed=signed,
                         time=str(entry["time"]), steps=steps.done, pruned=gone)


def rollback(settings: ProdSettings, ref: str, *, to_version: str | None = None, by: str = "",
             blueprint: str = "", arch: str = "", on_step: StepCallback | None = None) -> PromoteResult:
    """Publish a NEW commit whose tree is an earlier release's: parent = production, fresh timestamp,
    version = production's + 1 in the last place, metadata edgeci.rollback-of=<VERSION>."""
    repo = settings.repo
    if not (repo / "config").is_file():
        raise PromotionError("there is no production repository yet", where=str(repo),
                             fix="promote a release first (edgeci promote)")
    preflight(settings, ref)
    steps = _Steps(on_step)
    with repo_lock(repo, settings.lock_timeout):
        try:
            return _rollback_locked(settings, ref, steps, to_version=to_version, by=by, blueprint=blueprint,
                                    arch=arch)
        except (OSError, ToolError) as e:
            if no_space(e):
                raise _disk_full(steps, repo, ref, steps.done[0].detail.split()[0] if steps.done else "",
                                 f"run 'ostree --repo={repo} summary -u' (with --gpg-sign=KEY when production is "
                                 "signed; not 'edgeci rollback' again, which would roll back once more)") from None
            raise


def _rollback_locked(settings: ProdSettings, ref: str, steps: _Steps, *, to_version: str | None, by: str,
                     blueprint: str, arch: str) -> PromoteResult:
    """rollback() under the production lock."""
    repo = settings.repo
    log = ReleasesLog(repo)
    releases = log.for_ref(ref)
    current = ostree.rev_parse(repo, ref)
    if current is None or not releases:
        raise PromotionError(f"production has no release on {ref} to roll back", where=str(repo),
                             fix="check the blueprint name and --arch (edgeci history)")
    cur_version = release_version(releases, current) or releases[-1].get("version")
    if to_version:
        matches = [r for r in releases if r.get("version") == to_version]
        if not matches:
            known = ", ".join(str(r.get("version")) for r in releases)
            raise PromotionError(f"no release {to_version} on {ref}", where=str(log.path),
                                 fix=f"pick one of: {known}")
        target = matches[-1]
    else:
        earlier = [r for r in releases if r.get("checksum") != current]
        if not earlier:
            raise PromotionError(f"{ref} has only one release: nothing to roll back to", where=str(log.path))
        target = earlier[-1]
    tgt = str(target["checksum"])
    tgt_version = str(target.get("version"))
    if not ostree.has_commit(repo, tgt):
        kept = ", ".join(str(r.get("version")) for r in releases if ostree.has_commit(repo, str(r["checksum"])))
        raise PromotionError(f"release {tgt_version} ({policy.short(tgt)}) was pruned (prod.retention "
                             f"{settings.retention})", where=str(repo), fix=f"roll back to one of: {kept}")
    if not cur_version:
        raise PromotionError(f"production's commit {policy.short(current)} has no version", where=str(repo))
    new_version = next_version(cur_version)

    steps.begin("commit")
    # An orphan commit carries no ref binding, and clients refuse a commit not bound to the ref they pull.
    extra = [f"--bind-ref={ref}"]
    if ostree.metadata(repo, tgt, "ostree.bootable"):
        extra.append("--bootable")
    new = ostree.commit(
        repo, "", orphan=True, tree_ref=tgt, parent=current, owner_root=False,
        subject=f"Rollback to {tgt_version}",
        body=f"Tree of release {tgt_version} ({tgt}), published as a new commit on top of {current}.",
        metadata={"version": new_version, "edgeci.rollback-of": tgt_version,
                  "edgeci.rollback-of-commit": tgt},
        extra=extra,
    )
    steps.end(f"{policy.short(new)} = tree of {tgt_version}, version {new_version}, parent {policy.short(current)}")

    steps.begin("sign")
    signed, detail = _sign(settings, new)
    steps.end(detail)

    steps.begin("deltas")
    sources = _delta_sources(settings, new, current, releases)
    deltas = _deltas(settings, new, sources)
    steps.end(f"{len(deltas)} static delta(s) from " + ", ".join(policy.short(s) for s in sources))

    steps.begin("ref")
    ostree.set_ref(repo, ref, new)
    steps.end(f"{ref}: {policy.short(current)} -> {policy.short(new)}")

    steps.begin("summary")
    steps.end(_summary(settings))

    steps.begin("log")
    entry = _entry(None, ref, new, new_version, current, [], signed, deltas, blueprint=blueprint, arch=arch,
                   rollback_of=tgt_version, rollback_of_commit=tgt, by=by)
    log.append(entry)
    steps.end(f"rollback {new_version} (= {tgt_version}) appended to {log.path.name}")

    steps.begin("prune")
    gone, detail = _prune(settings)
    steps.end(detail)
    return PromoteResult(str(repo), ref, new, current, new_version, deltas=deltas, signed=signed,
                         time=str(entry["time"]), steps=steps.done, pruned=gone, rollback_of=tgt_version)
