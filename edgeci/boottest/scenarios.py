"""The three boot-test scenarios, run on any Guest: install, upgrade, rollback.

install  — a fresh device deploys the candidate from the stage repo (REF pinned @CHECKSUM) and boots it.
upgrade  — a device runs production's commit, then upgrades to the candidate through the stage remote
           (a static delta when the stage repo has one from production); bytes fetched are recorded.
rollback — on that upgraded device a required check is made to fail on the candidate; the previous
           deployment must be the one running afterwards (greenboot semantics).
With production empty (first release) upgrade and rollback are SKIPPED with the reason, never passed.
Each scenario is one JUnit suite with one case per check; a check that cannot run is an ERROR.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeci.boottest.guest import (
    HEALTHY,
    INJECTED_CHECK_NAME,
    UNHEALTHY,
    BootResult,
    Guest,
    PullStats,
    RollbackResult,
)
from edgeci.errors import EdgeCIError
from edgeci.junit import Case, Outcome, Suite
from edgeci.production import Production

if TYPE_CHECKING:
    from edgeci.checks import Check
    from edgeci.record import Candidate

STAGE_REMOTE = "edgeci-stage"
PROD_REMOTE = "edgeci-prod"
SCENARIOS = ("install", "upgrade", "rollback")
FIRST_RELEASE = "production is empty (first release)"
SAME_AS_PRODUCTION = "the candidate is production's current commit (nothing to upgrade from)"
NEEDS_RUNNING = "needs a running system (sysroot backend)"
BOOT_CASE = "boot"


@dataclass
class ScenarioResult:
    name: str
    cases: list[Case] = field(default_factory=list)
    reason: str = ""
    booted: str | None = None
    pull: PullStats | None = None
    seconds: float = 0.0

    @property
    def outcome(self) -> Outcome:
        outcomes = {c.outcome for c in self.cases}
        if Outcome.ERROR in outcomes:
            return Outcome.ERROR
        if Outcome.FAILED in outcomes:
            return Outcome.FAILED
        if outcomes == {Outcome.SKIPPED}:
            return Outcome.SKIPPED
        return Outcome.PASSED

    def suite(self) -> Suite:
        return Suite(self.name, self.cases)

    def as_record(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "outcome": self.outcome.value,
            "reason": self.reason or _reason(self.cases),
            "checks": [{"name": c.name, "outcome": c.outcome.value, "output": c.output or c.message}
                       for c in self.cases],
            "booted": self.booted,
            "seconds": round(self.seconds, 3),
        }
        if self.pull is not None:
            d["pull"] = self.pull.as_dict()
        return d


def _reason(cases: list[Case]) -> str:
    bad = [c for c in cases if c.outcome in (Outcome.FAILED, Outcome.ERROR)]
    if bad:
        return "; ".join(f"{c.name}: {c.message}" for c in bad[:3]) + (f" (+{len(bad) - 3} more)" if len(bad) > 3
                                                                         else "")
    return ""


# -- from a boot to JUnit cases ---------------------------------------------------------------------

def _first_line(text: str) -> str:
    for line in text.strip().splitlines():
        if line.strip():
            return line.strip()[:200]
    return "(no output)"


def boot_case(boot: BootResult, want_commit: str, *, what: str = "candidate") -> Case:
    """Did the device come up on the commit it should run? (host-side: booted == want_commit)."""
    if not boot.running:
        if boot.commit == want_commit:
            return Case(BOOT_CASE, Outcome.PASSED, f"the default deployment is the {what} {want_commit} "
                        "(sysroot backend: deployed, not booted)", boot.summary(), boot.seconds)
        return Case(BOOT_CASE, Outcome.FAILED, f"the default deployment is {boot.commit}, not the {what} "
                    f"{want_commit}", boot.summary(), boot.seconds)
    output = f"{boot.summary()}\n{boot.log}".strip()
    if boot.commit is None:
        return Case(BOOT_CASE, Outcome.FAILED, f"the {what} did not boot: {boot.error or 'no EDGECI-BOOT line'}",
                    output, boot.seconds)
    if boot.commit != want_commit:
        why = f": {boot.error}" if boot.error else ""
        return Case(BOOT_CASE, Outcome.FAILED, f"booted commit {boot.commit} is not the {what} {want_commit}{why}",
                    output, boot.seconds)
    if not boot.finished:
        return Case(BOOT_CASE, Outcome.FAILED, f"the {what} booted but did not finish its health checks: "
                    f"{boot.error or 'no EDGECI-DONE line'}", output, boot.seconds)
    if boot.error:  # finished, but the protocol was broken somewhere (lost lines)
        return Case(BOOT_CASE, Outcome.ERROR, f"console protocol error: {boot.error}", output, boot.seconds)
    return Case(BOOT_CASE, Outcome.PASSED, f"booted {boot.commit} ({boot.status})", output, boot.seconds)


def check_cases(checks: Sequence[Check], boot: BootResult, candidate: str, version: str) -> list[Case]:
    """One case per check of the blueprint's checks file, plus any result the system reported that the
    file does not name (a script in the composed tree, say)."""
    cases = []
    for check in checks:
        cases.append(_check_case(check, boot, candidate, version))
    named = {c.name for c in checks}
    for rep in boot.checks:
        if rep.name in named:
            continue
        if rep.passed:
            cases.append(Case(rep.name, Outcome.PASSED, f"{rep.kind} check passed (not in the checks file)",
                              rep.output))
        elif rep.kind == "wanted":
            cases.append(Case(rep.name, Outcome.PASSED, "wanted check failed: greenboot only warns", rep.output))
        else:
            cases.append(Case(rep.name, Outcome.FAILED,
                              f"required check '{rep.name}' failed: {_first_line(rep.output)}", rep.output))
    return cases


def _check_case(check: Check, boot: BootResult, candidate: str, version: str) -> Case:
    name = check.name
    if check.kind == "booted_commit":
        if boot.commit is None:
            return Case(name, Outcome.ERROR, "did not run: the system reported no booted commit",
                        boot.error or boot.log[-2000:])
        out = f"booted {boot.commit}\ncandidate {candidate}"
        if boot.commit == candidate:
            return Case(name, Outcome.PASSED, "the booted commit is the candidate", out)
        return Case(name, Outcome.FAILED, f"check '{name}' failed: booted {boot.commit}, not the candidate "
                    f"{candidate}", out)
    if not boot.running:
        if check.needs_running:
            return Case(name, Outcome.SKIPPED, NEEDS_RUNNING)
        if boot.tree is None:
            return Case(name, Outcome.ERROR, "did not run: no deployed tree to check")
        from edgeci import checks as checks_mod

        started = time.monotonic()
        try:
            ok, output = checks_mod.evaluate_in_tree(check, boot.tree, version, booted_commit=boot.commit)
        except (EdgeCIError, ValueError, OSError) as e:
            return Case(name, Outcome.ERROR, f"did not run: {e}", "", time.monotonic() - started)
        took = time.monotonic() - started
        if ok:
            return Case(name, Outcome.PASSED, "passed in the deployed tree", output, took)
        if not check.required:
            return Case(name, Outcome.PASSED, "wanted check failed: greenboot only warns", output, took)
        return Case(name, Outcome.FAILED, f"check '{name}' failed: {_first_line(output)}", output, took)
    rep = boot.report(name)
    if rep is None:
        if not boot.finished:
            why = boot.error or "the boot did not finish"
            return Case(name, Outcome.ERROR, f"did not run: {why}", boot.log[-2000:])
        return Case(name, Outcome.ERROR, "did not run: the system reported no result for this check (is it "
                    "rendered into the composed tree's /etc/greenboot/check?)", boot.log[-2000:])
    if rep.passed:
        return Case(name, Outcome.PASSED, f"{rep.kind} check passed", rep.output)
    if rep.kind == "wanted":
        return Case(name, Outcome.PASSED, "wanted check failed: greenboot only warns", rep.output)
    return Case(name, Outcome.FAILED, f"check '{name}' failed: {_first_line(rep.output)}", rep.output)


def _not_run(checks: Sequence[Check], outcome: Outcome, message: str, leading: tuple[str, ...]) -> list[Case]:
    """Cases for a scenario that could not run (ERROR) or does not apply (SKIPPED)."""
    return [Case(n, outcome, message) for n in [*leading, *(c.name for c in checks)]]


# -- the runner -------------------------------------------------------------------------------------

ROLLBACK_CASES = ("candidate-unhealthy", "previous-booted", "previous-healthy")
UPGRADE_LEADING = ("upgrade-pull", BOOT_CASE)


@dataclass
class BootTestResult:
    backend: str
    scenarios: list[ScenarioResult]

    @property
    def ok(self) -> bool:
        return all(s.outcome in (Outcome.PASSED, Outcome.SKIPPED) for s in self.scenarios)

    def scenario(self, name: str) -> ScenarioResult | None:
        return next((s for s in self.scenarios if s.name == name), None)

    def _bytes(self, name: str) -> int | None:
        s = self.scenario(name)
        return s.pull.bytes if s is not None and s.pull is not None else None

    @property
    def full_bytes(self) -> int | None:
        """What a fresh device fetched for the candidate (the install scenario's pull)."""
        return self._bytes("install")

    @property
    def delta_bytes(self) -> int | None:
        """What a production device fetched to upgrade (a static delta when the stage repo has one)."""
        return self._bytes("upgrade")


GuestFactory = Callable[[str], Guest]
Progress = Callable[[str], None]


def run_scenarios(backend: str, make_guest: GuestFactory, candidate: Candidate, production: Production,
                  checks: Sequence[Check], *, progress: Progress | None = None,
                  only: tuple[str, ...] = SCENARIOS, parallel: bool = False,
                  older: Sequence[Production] = ()) -> BootTestResult:
    """Run install on one device, upgrade + rollback on another (both at once when `parallel`: they are
    independent devices, and a TCG VM keeps one core busy). Infrastructure errors inside a scenario become
    ERROR cases (the report is still written); KeyboardInterrupt stops every guest and propagates."""
    say = progress or (lambda _msg: None)
    cancel = threading.Event()

    def guest_for(scenario: str) -> Guest:
        guest = make_guest(scenario)
        guest.cancel = cancel
        return guest

    jobs: list[Callable[[], list[ScenarioResult]]] = []
    if "install" in only:
        jobs.append(lambda: [_install(guest_for, candidate, checks, say)])
    wanted = [s for s in ("upgrade", "rollback") if s in only]
    skip = FIRST_RELEASE if production.empty else (
        SAME_AS_PRODUCTION if production.commit == candidate.checksum else "")
    skipped: list[ScenarioResult] = []
    if wanted and skip:
        for name in wanted:
            res = ScenarioResult(name, reason=skip)
            res.cases = (_not_run(checks, Outcome.SKIPPED, skip, UPGRADE_LEADING) if name == "upgrade"
                         else [Case(n, Outcome.SKIPPED, skip) for n in ROLLBACK_CASES])
            say(f"{name}: skipped: {skip}")
            skipped.append(res)
    elif wanted:
        jobs.append(lambda: _upgrade_and_rollback(guest_for, candidate, production, checks, say, wanted))
    if "upgrade" in only and not skip:
        # the upgrade matrix: a device on each older release upgrades straight to the candidate too
        for release in older:
            jobs.append(functools.partial(_upgrade_from_job, guest_for, candidate, release, checks, say))

    results: list[ScenarioResult] = []
    if parallel and len(jobs) > 1:
        with ThreadPoolExecutor(max_workers=len(jobs), thread_name_prefix="edgeci-boot-test") as pool:
            futures = [pool.submit(job) for job in jobs]
            try:
                for f in futures:
                    results += f.result()
            except BaseException:
                cancel.set()  # the other device's VM stops at its next poll; the pool waits for it
                raise
    else:
        for job in jobs:
            results += job()
    return BootTestResult(backend, results + skipped)


def _install(make_guest: GuestFactory, candidate: Candidate, checks: Sequence[Check],
             say: Progress) -> ScenarioResult:
    res = ScenarioResult("install")
    t0 = time.monotonic()
    guest = make_guest("install")
    try:
        with guest:
            say(f"install: deploying {candidate.checksum[:12]} from {candidate.stage_url} ({guest.backend})")
            dep = guest.deploy(STAGE_REMOTE, candidate.stage_url, candidate.ref, candidate.checksum)
            res.pull = dep.pull
            say(f"install: pulled {dep.pull.describe()}; booting")
            boot = guest.boot()
            res.booted = boot.commit
            res.cases = [boot_case(boot, candidate.checksum),
                         *check_cases(checks, boot, candidate.checksum, candidate.version or "")]
    except EdgeCIError as e:
        res.cases = [Case("setup", Outcome.ERROR, str(e)),
                     *_not_run(checks, Outcome.ERROR, f"did not run: {e}", (BOOT_CASE,))]
    res.seconds = time.monotonic() - t0
    say(f"install: {res.outcome.value} ({res.seconds:.1f}s)")
    return res


def _upgrade_and_rollback(make_guest: GuestFactory, candidate: Candidate, production: Production,
                          checks: Sequence[Check], say: Progress, wanted: Sequence[str]) -> list[ScenarioResult]:
    up = ScenarioResult("upgrade")
    rb = ScenarioResult("rollback")
    prod_commit = production.commit or ""
    t0 = time.monotonic()
    guest = make_guest("upgrade")
    stage = "production"
    try:
        with guest:
            say(f"upgrade: deploying production {prod_commit[:12]} from {production.url}")
            prod_dep = guest.deploy(PROD_REMOTE, production.url, candidate.ref, production.commit)
            if prod_dep.commit != prod_commit:
                raise EdgeCIError(f"production deployed {prod_dep.commit}, expected {prod_commit}",
                                  where=production.url)
            stage = "upgrade"
            dep = guest.deploy(STAGE_REMOTE, candidate.stage_url, candidate.ref, candidate.checksum)
            up.pull = dep.pull
            say(f"upgrade: pulled {dep.pull.describe()}; booting")
            boot = guest.boot()
            up.booted = boot.commit
            pull_case = Case("upgrade-pull", Outcome.PASSED,
                             f"{prod_commit[:12]} → {candidate.checksum[:12]}: {dep.pull.describe()}",
                             dep.pull.text)
            up.cases = [pull_case, boot_case(boot, candidate.checksum),
                        *check_cases(checks, boot, candidate.checksum, candidate.version or "")]
            up.seconds = time.monotonic() - t0
            say(f"upgrade: {up.outcome.value} ({up.seconds:.1f}s)")
            if "rollback" in wanted:
                t1 = time.monotonic()
                stage = "rollback"
                say("rollback: injecting a failing required check into the candidate deployment")
                rr = guest.prove_rollback()
                rb.booted = rr.previous.commit
                rb.cases = _rollback_cases(guest, rr, prod_commit)
                rb.seconds = time.monotonic() - t1
                say(f"rollback: {rb.outcome.value} ({rb.seconds:.1f}s)")
    except EdgeCIError as e:
        if stage in ("production", "upgrade"):
            up.cases = [Case("setup", Outcome.ERROR, f"{stage} deployment failed: {e}"),
                        *_not_run(checks, Outcome.ERROR, f"did not run: {e}", UPGRADE_LEADING)]
            up.seconds = time.monotonic() - t0
        rb.cases = [Case(n, Outcome.ERROR, f"did not run: {stage} failed: {e}") for n in ROLLBACK_CASES]
    out = [up] if "upgrade" in wanted else []
    if "rollback" in wanted:
        out.append(rb)
    return out


def upgrade_from_name(release: Production) -> str:
    return f"upgrade-from-{release.version or (release.commit or '')[:12]}"


def _upgrade_from_job(make_guest: GuestFactory, candidate: Candidate, release: Production,
                      checks: Sequence[Check], say: Progress) -> list[ScenarioResult]:
    return [_upgrade_from(make_guest, candidate, release, checks, say)]


def _upgrade_from(make_guest: GuestFactory, candidate: Candidate, release: Production, checks: Sequence[Check],
                  say: Progress) -> ScenarioResult:
    """An older production release upgraded straight to the candidate, as a device that missed updates is."""
    name = upgrade_from_name(release)
    res = ScenarioResult(name)
    t0 = time.monotonic()
    try:
        with make_guest(name) as guest:
            say(f"{name}: deploying release {release.version} ({(release.commit or '')[:12]}) from {release.url}")
            dep = guest.deploy(PROD_REMOTE, release.url, candidate.ref, release.commit)
            if dep.commit != release.commit:
                raise EdgeCIError(f"the release deployed {dep.commit}, expected {release.commit}", where=release.url)
            up = guest.deploy(STAGE_REMOTE, candidate.stage_url, candidate.ref, candidate.checksum)
            res.pull = up.pull
            boot = guest.boot()
            res.booted = boot.commit
            res.cases = [Case("upgrade-pull", Outcome.PASSED, f"{(release.commit or '')[:12]} → "
                              f"{candidate.checksum[:12]}: {up.pull.describe()}", up.pull.text),
                         boot_case(boot, candidate.checksum),
                         *check_cases(checks, boot, candidate.checksum, candidate.version or "")]
    except EdgeCIError as e:
        res.cases = [Case("setup", Outcome.ERROR, f"deploying release {release.version} failed: {e}"),
                     *_not_run(checks, Outcome.ERROR, f"did not run: {e}", UPGRADE_LEADING)]
    res.seconds = time.monotonic() - t0
    say(f"{name}: {res.outcome.value} ({res.seconds:.1f}s)")
    return res


def older_releases(releases: Sequence[dict[str, Any]], production: Production, candidate: str,
                   count: int) -> list[Production]:
    """The upgrade matrix's starting points: up to `count` releases before production's current one (newest
    first, each commit once), from the releases log (oldest first)."""
    out: list[Production] = []
    seen = {production.commit, candidate}
    for entry in reversed(releases):
        commit = str(entry.get("checksum") or "")
        if not commit or commit in seen:
            continue
        seen.add(commit)
        out.append(Production(ref=production.ref, commit=commit, version=str(entry.get("version") or "") or None,
                              url=production.url, source=production.source))
        if len(out) >= count:
            break
    return out


def _rollback_cases(guest: Guest, rr: RollbackResult, prod_commit: str) -> list[Case]:
    cases = []
    cand = rr.candidate
    if cand is None:
        if guest.runs_system:
            cases.append(Case("candidate-unhealthy", Outcome.PASSED, rr.detail or "the device rolled back itself"))
        else:
            cases.append(Case("candidate-unhealthy", Outcome.SKIPPED, NEEDS_RUNNING, rr.detail))
    else:
        injected = cand.report(INJECTED_CHECK_NAME)
        out = f"{cand.summary()}\n{cand.log}".strip()
        if cand.status == UNHEALTHY and injected is not None and not injected.passed:
            cases.append(Case("candidate-unhealthy", Outcome.PASSED,
                              "the injected required check failed and the candidate boot was unhealthy",
                              out, cand.seconds))
        elif cand.status == HEALTHY:
            cases.append(Case("candidate-unhealthy", Outcome.FAILED,
                              "the candidate stayed healthy with a failing required check "
                              f"({INJECTED_CHECK_NAME} {'not run' if injected is None else 'passed'})",
                              out, cand.seconds))
        else:
            cases.append(Case("candidate-unhealthy", Outcome.FAILED,
                              f"the candidate boot with the injected failure did not finish: "
                              f"{cand.error or 'no EDGECI-DONE'}", out, cand.seconds))
    prev = rr.previous
    pout = f"{rr.detail}\n{prev.summary()}\n{prev.log}".strip()
    if prev.commit == prod_commit:
        cases.append(Case("previous-booted", Outcome.PASSED, f"running {prod_commit} (production) after the "
                          "rollback", pout, prev.seconds))
    else:
        cases.append(Case("previous-booted", Outcome.FAILED, f"running {prev.commit or 'nothing'} after the "
                          f"rollback, not production {prod_commit}", pout, prev.seconds))
    if not prev.running:
        cases.append(Case("previous-healthy", Outcome.SKIPPED, NEEDS_RUNNING))
    elif prev.status == HEALTHY:
        cases.append(Case("previous-healthy", Outcome.PASSED, "the previous deployment is healthy", pout))
    else:
        failed = [c.name for c in prev.checks if not c.passed and c.kind == "required"]
        why = (f"required checks failed: {', '.join(failed)}" if failed
               else prev.error or f"status {prev.status or 'not reported'}")
        cases.append(Case("previous-healthy", Outcome.FAILED, f"the previous deployment is not healthy: {why}",
                          pout))
    return cases


# -- production ---------------------------------------------------------------------------------------

def resolve_production(repo: Path | None, url: str, ref: str) -> Production:
    """Production's current commit for `ref`: from the local repo when there is one, else from `url`.

    A missing repo or ref is an empty production (first release). A device reaches the repo through
    `url`, or file://REPO when no URL is configured.
    """
    from edgeci.tools import ostree

    if repo is not None and (repo / "config").is_file():
        commit = ostree.rev_parse(repo, ref)
        return Production(commit=commit, url=url or repo.resolve().as_uri(), source=str(repo))
    if url:
        return Production(commit=_remote_commit(url, ref), url=url, source=url)
    return Production(commit=None, url=repo.resolve().as_uri() if repo else "", source=str(repo or ""))


def _remote_commit(url: str, ref: str) -> str | None:
    """Ask a remote repo for ref's commit (metadata only, into a scratch repo)."""
    import tempfile

    from edgeci.errors import BootTestError
    from edgeci.tools import ostree

    with tempfile.TemporaryDirectory(prefix="edgeci-prod-") as tmp:
        scratch = Path(tmp) / "repo"
        ostree.init(scratch, mode="bare-user")
        ostree.remote_add(scratch, PROD_REMOTE, url)
        r = ostree.cli(scratch, "pull", "--commit-metadata-only", PROD_REMOTE, ref, check=False, timeout=300)
        if r.ok:
            return ostree.rev_parse(scratch, f"{PROD_REMOTE}:{ref}")
        text = r.stderr + r.stdout
        if any(s in text for s in ("No such branch", "not found", "404", "No such file")):
            return None
        raise BootTestError(f"cannot read production's '{ref}' from {url}: {text.strip()[-300:]}",
                            where="prod.url", fix="check that the production repo is reachable")
