"""Fault drills: the whole pipeline (the CLI as separate processes, as CI runs it) with one injected fault each.

Every drill ends with one clear message, the documented exit code (1 the candidate failed, 2 infrastructure),
a JUnit report whose failing testcase carries the reason, and production unchanged (its ref, releases log
and summary byte for byte) or converged after a re-run. The secrets drill configures canary credentials
for the registry, GitLab, Jenkins and the composer and proves they appear in no output, report, record or
log. The drills share one released project (tests/fixtures/drills.py: 1.0.0 in production, 1.0.1 staged
and boot-tested with the sysroot backend) and copy it per drill.
"""

from __future__ import annotations

import base64
import secrets
import shutil
import signal
from pathlib import Path

import pytest
import yaml

from edgeci.tools import ostree
from tests.fixtures.drills import (
    DRILL_ARCH,
    DRILL_BP,
    SYSROOT,
    DrillProject,
    DrillRelease,
    git,
    junit_case,
    junit_cases,
    junit_failed,
    junit_problem,
)
from tests.fixtures.promote import kill_group, wait_for
from tests.fixtures.registry import FaultProxy, Registry
from tests.fixtures.weldr_server import EdgeArtifacts

pytestmark = pytest.mark.slow

BP, ARCH = DRILL_BP, DRILL_ARCH
TARGET = f"{BP}/{ARCH}"


def classname(stage: str, suite: str | None = None) -> str:
    return f"edgeci.{stage}.{BP}.{ARCH}" + (f".{suite}" if suite else "")


def assert_no_half_written(project: DrillProject) -> None:
    """No temporary files left next to the record or the reports (atomic writes only)."""
    for d in (project.record_path.parent, project.dir / "reports"):
        leftovers = [p.name for p in d.iterdir() if p.name.startswith(".") or p.name.endswith((".tmp", ".part"))]
        assert leftovers == [], f"{d}: {leftovers}"


def assert_production_sound(project: DrillProject) -> None:
    """Every ref names a complete commit (no dangling ref, no commitpartial) and fsck passes."""
    repo = project.prod_repo
    for name in ostree.refs(repo):
        c = ostree.rev_parse(repo, name)
        assert c and ostree.has_commit(repo, c) and not ostree.is_partial(repo, c), f"{name} -> {c}"
    r = ostree.fsck(repo)
    assert r.ok and "no errors" in (r.stdout + r.stderr).lower(), r.stdout + r.stderr


# -- 1. compose FAILED ------------------------------------------------------------------------------

def test_compose_failed_exits_1_with_the_compose_log_in_junit(drill_project: DrillProject,
                                                               drill_release: DrillRelease) -> None:
    p = drill_project
    before = p.prod()
    # The local composer (like Image Builder) fails a user in a group that does not exist; lint does not.
    p.edit("blueprints/gateway.toml", 'groups = ["wheel"]', 'groups = ["wheel", "nosuchgroup"]')
    p.edit("blueprints/gateway.toml", 'version = "1.0.1"', 'version = "1.0.2"')
    p.commit("gateway 1.0.2: core joins nosuchgroup")

    r = p.cli("run", BP, *SYSROOT)
    assert r.rc == 1, r
    line = r.one_error()
    assert "FAILED: user 'core' is in group 'nosuchgroup', which does not exist" in line, line
    assert 'Add [[customizations.group]] name = "nosuchgroup"' in line
    assert f"<== compose {TARGET}: failed" in r.out and "==> push" not in r.out

    compose = p.sections["compose"]
    kind, message, text = junit_problem(junit_case(p.report("compose"), "compose", classname("compose")))
    assert kind == "failure"
    assert f"compose {compose['id']} FAILED" in message and "nosuchgroup" in message
    log = (p.dir / "build" / "composer" / "composes" / compose["id"] / "log").read_text()
    log_lines = [ln for ln in log.splitlines() if ln.strip()]
    assert len(log_lines) >= 3 and any("FAILED: user 'core'" in ln for ln in log_lines)
    for ln in log_lines:  # the whole compose log travels with the failure
        assert ln in text, f"compose log line missing from the JUnit failure: {ln}"

    # the record: a failed compose, nothing of the old candidate's later stages left to promote from
    s = p.sections
    assert s["compose"]["status"] == "failed" and s["compose"]["commit"] == ""
    assert s["blueprint"]["version"] == "1.0.2"
    assert not {"push", "stage", "boot_test", "gate", "promote"} & set(s)
    promote = p.cli("promote", BP)
    assert promote.rc == 2, promote
    assert "the 'compose' stage failed. Fix the candidate and re-run 'edgeci compose'" in promote.one_error()
    assert p.prod() == before
    assert_no_half_written(p)


# -- 2. registry 500 then OK; a registry that stays 500 --------------------------------------------

def test_registry_500_then_ok_is_retried_and_one_that_stays_500_exits_2(
        drill_project: DrillProject, registry: Registry, registry_proxy: FaultProxy) -> None:
    from edgeci.tools import skopeo

    p = drill_project
    before = p.prod()
    p.env.update({**registry.env, "EDGECI_REGISTRY_IMAGE": f"docker://{registry_proxy.host}/gateway",
                  "EDGECI_REGISTRY_TLS_VERIFY": "false", "EDGECI_REGISTRY_RETRY_BACKOFF": "0.05"})

    # The proxy answers 500 to the first requests (the registry's /v2/ ping included), then forwards.
    registry_proxy.failures = 2
    r = p.cli("push", BP)
    assert r.rc == 0, r
    assert registry_proxy.injected() == 2
    push = p.sections["push"]
    assert push["destination"] == f"docker://{registry_proxy.host}/gateway"
    assert push["digest"].startswith("sha256:") and push["image_ref"] == f"{push['destination']}@{push['digest']}"
    assert f"push {TARGET}: {push['image_ref']}" in r.out
    # the image really is in the registry (asked directly, not through the proxy), under the recorded digest
    direct = skopeo.inspect(f"docker://{registry.host}/gateway@{push['digest']}", tls_verify=False,
                            creds=skopeo.Creds(registry.user, registry.password))
    assert direct["Digest"] == push["digest"]
    assert junit_failed(p.report("push")) == []
    assert [c.get("name") for c in junit_cases(p.report("push"))] == ["copy", "tag 1.0.1", "tag latest", "verify"]

    # the pipeline carries on from the pushed image: the stage pulls it (by digest) and the boot test passes
    r = p.cli("run", BP, "--resume", "--until", "boot-test", *SYSROOT)
    assert r.rc == 0, r
    assert p.sections["stage"]["commit"] == p.sections["compose"]["commit"]
    assert p.sections["boot_test"]["status"] == "passed"
    p.stop_own_stage_server()

    # A registry that keeps answering 500: bounded retries, then one line and exit 2 (infrastructure).
    record_before = p.record_path.read_bytes()
    registry_proxy.failures = 1000
    r = p.cli("push", BP, "--set", "registry.retry_times=1")
    assert r.rc == 2, r
    line = r.one_error()
    assert f"registry {registry_proxy.host} answered HTTP 500 Internal Server Error (2 attempts)" in line, line
    assert "check its logs" in line
    kind, message, _ = junit_problem(junit_case(p.report("push"), "copy", classname("push")))
    assert kind == "error" and "answered HTTP 500" in message
    assert p.record_path.read_bytes() == record_before  # the failed push recorded nothing
    assert p.prod() == before
    assert_no_half_written(p)


# -- 3. the stage serves a stale commit -------------------------------------------------------------

def test_a_stage_serving_an_older_commit_exits_1_naming_both_checksums(
        drill_project: DrillProject, drill_release: DrillRelease) -> None:
    from tests.fixtures.httpserver import serve_directory

    p = drill_project
    before = p.prod()
    # A stage host whose container still serves the previous release (podman auto-update did not run).
    with serve_directory(p.prod_repo) as url:
        r = p.cli("run", BP, *SYSROOT, "--set", "stage.mode=wait", "--set", f"stage.url={url}",
                  "--set", "stage.wait_deadline=1.5", "--set", "stage.wait_interval=0.2")
    assert r.rc == 1, r
    expected = p.sections["compose"]["commit"]
    served = drill_release.old
    assert expected not in (served, drill_release.new)
    line = r.one_error()
    assert f"the stage serves {served}, expected {expected}" in line, line
    assert f"{url}/refs/heads/rhel/9/x86_64/edge" in line and "stage.wait_deadline" in line
    assert f"<== stage {TARGET}: failed" in r.out and "==> boot-test" not in r.out

    kind, message, _ = junit_problem(junit_case(p.report("stage"), "served commit", classname("stage")))
    assert kind == "failure" and served in message and expected in message
    s = p.sections
    assert s["push"]["status"] == "passed" and not {"stage", "boot_test", "gate"} & set(s)
    bt = p.cli("boot-test", BP, *SYSROOT)  # nothing downstream runs on an unverified stage
    assert bt.rc == 2 and "no 'stage' section" in bt.one_error(), bt
    assert p.prod() == before
    assert_no_half_written(p)


# -- 4. a boot-test check fails ----------------------------------------------------------------------

def test_a_failing_boot_check_exits_1_and_the_gate_refuses(drill_project: DrillProject,
                                                           drill_release: DrillRelease) -> None:
    p = drill_project
    before = p.prod()
    p.edit("blueprints/gateway.checks.yaml", "text: gateway}", "text: gateway-east-1}")
    p.commit("checks: gateways are named by region now")

    r = p.cli("run", BP, *SYSROOT)
    assert r.rc == 1, r
    assert r.errors == [], r  # a failing check is a result, not an error
    verdicts = [ln for ln in r.out.splitlines() if ln.startswith(f"boot-test {TARGET}: FAILED")]
    assert verdicts == [f"boot-test {TARGET}: FAILED (install/hostname, upgrade/hostname)"], r.out
    assert f"<== boot-test {TARGET}: failed" in r.out and "==> gate" not in r.out
    assert p.sections["stage"]["pid"] != drill_release.stage_pid  # this candidate's own stage server

    report = p.report("boot-test")
    assert junit_failed(report) == ["hostname", "hostname"]
    for scenario in ("install", "upgrade"):
        kind, message, text = junit_problem(junit_case(report, "hostname", classname("boot-test", scenario)))
        assert kind == "failure"
        assert message == "check 'hostname' failed: /etc/hostname does not contain: gateway-east-1"
        assert "/etc/hostname does not contain: gateway-east-1" in text
    bt = p.sections["boot_test"]
    assert bt["status"] == "failed" and "gate" not in p.sections
    install_checks = {c["name"]: c["outcome"] for c in bt["scenarios"]["install"]["checks"]}
    assert install_checks["hostname"] == "failed" and install_checks["core-user"] == "passed"

    # Even with an approval, the gate refuses a candidate whose boot test failed (stages-passed).
    assert p.cli("approve", BP, "--as", "alex").rc == 0
    g = p.cli("gate", BP)
    assert g.rc == 1, g
    fails = [ln.split() for ln in g.out.splitlines() if ln.strip().startswith("FAIL")]
    assert [f[1] for f in fails] == ["stages-passed", "boot-test-coverage"], g.out
    assert "the boot-test stage failed for" in g.out
    assert junit_failed(p.report("gate")) == ["stages-passed", "boot-test-coverage"]
    _, message, _ = junit_problem(junit_case(p.report("gate"), "stages-passed", classname("gate")))
    assert "the boot-test stage failed" in message
    promote = p.cli("promote", BP)
    # promote reads the signed boot-test result, not the gate's record
    assert promote.rc == 1 and "boot-test: " in promote.one_error() and "failed" in promote.one_error(), promote
    assert p.prod() == before
    assert_no_half_written(p)


# -- 5. the gate denies a self-approval --------------------------------------------------------------

def test_self_approval_is_denied_promote_refuses_and_production_is_unchanged(
        drill_project: DrillProject, drill_release: DrillRelease) -> None:
    p = drill_project
    before = p.prod()
    a = p.cli("approve", BP, "--as", "dana@example.com")  # Dana wrote the change
    assert a.rc == 0 and "the gate will not count this approval" in a.err, a

    r = p.cli("run", BP, "--resume", *SYSROOT)
    assert r.rc == 1, r
    assert "==> gate" in r.out and "==> promote" not in r.out and "==> boot-test" not in r.out
    fails = {ln.split()[1]: ln.strip() for ln in r.out.splitlines() if ln.strip().startswith("FAIL")}
    # alex's approval of the released 1.0.0 is still on disk: history, neither counted nor reported for 1.0.1
    assert list(fails) == ["no-self-approval", "approvals-required"], r.out
    assert "alex" not in fails["approvals-required"]
    assert "dana@example.com is the commit author" in fails["no-self-approval"]
    assert "no one approves their own change" in fails["no-self-approval"]
    assert "0 of 1 required" in fails["approvals-required"]
    assert f"gate denied: {BP} {ARCH} {drill_release.new}" in r.out
    # it says how to get on: approve as someone else, then resume
    assert f"    edgeci approve {BP} --arch {ARCH} --as NAME" in r.out.splitlines()
    assert f"    edgeci --set boot_test.backend=sysroot run {BP} --arch {ARCH} --resume" in r.out

    _, message, _ = junit_problem(junit_case(p.report("gate"), "no-self-approval", classname("gate")))
    assert "dana@example.com is the commit author" in message
    gate = p.sections["gate"]
    assert gate["decision"] == "denied" and gate["status"] == "failed" and gate["approvals"] == []

    promote = p.cli("promote", BP)
    assert promote.rc == 1, promote
    # promote counts signed approvals itself: Dana's, the author's, does not count
    error = promote.one_error()
    assert error.startswith(f"edgeci: error: evidence for {drill_release.new[:12]}: approvals: 0 of 1 required"), error
    assert "is an author of the change" in error
    assert p.prod() == before

    # converges: a reviewer approves, the pipeline resumes and promotes exactly the boot-tested commit
    assert p.cli("approve", BP, "--as", "alex").rc == 0
    r = p.cli("run", BP, "--resume", *SYSROOT)
    assert r.rc == 0 and "promoted:" in r.out, r
    assert p.prod().commit == drill_release.new
    assert [(x["checksum"], x["approvers"]) for x in p.releases()] == [
        (drill_release.old, ["alex"]), (drill_release.new, ["alex"])]
    assert_production_sound(p)


# -- 6. SIGKILL during promote -------------------------------------------------------------------------

def test_sigkill_during_promote_leaves_old_or_new_and_a_rerun_converges(
        drill_project: DrillProject, drill_release: DrillRelease) -> None:
    p = drill_project
    old, new = drill_release.old, drill_release.new
    before = p.prod()
    assert p.cli("approve", BP, "--as", "alex").rc == 0
    assert p.cli("gate", BP).rc == 0

    # killed after pull and verify, before deltas and the ref: production is exactly as before
    # killed right after the ref moved, before the summary and the releases log: the new commit, complete
    for spot, expected in (("deltas", old), ("after-ref", new)):
        proc = p.spawn("promote", BP, env={"EDGECI_TEST_PAUSE_AT": spot})
        try:
            out = wait_for(proc, f"edgeci-test: paused at {spot}")
        finally:
            kill_group(proc)
        assert proc.returncode == -signal.SIGKILL
        assert "promote pull:" in out
        assert p.prod().commit == expected, f"killed at {spot}"
        if spot == "deltas":
            assert p.prod() == before
        assert_production_sound(p)
        assert [x["checksum"] for x in p.releases()] == [old]

    r = p.cli("promote", BP)
    assert r.rc == 0 and "promoted:" in r.out, r
    assert p.prod().commit == new
    assert [x["checksum"] for x in p.releases()] == [old, new]
    assert f"{old}-{new}" in ostree.static_delta_list(p.prod_repo)
    assert_production_sound(p)
    assert junit_failed(p.report("promote")) == []
    log_case = junit_case(p.report("promote"), "log", classname("promote"))
    log_out = log_case.find("system-out")
    assert log_out is not None and "release 1.0.1 appended" in (log_out.text or "")
    promote = p.sections["promote"]
    assert (promote["status"], promote["checksum"], promote["previous"]) == ("passed", new, old)

    again = p.cli("promote", BP)  # converged: a further run changes nothing
    assert again.rc == 0 and "already in production" in again.out, again
    assert [x["checksum"] for x in p.releases()] == [old, new]


# -- 7. secrets never leak ---------------------------------------------------------------------------

def _scan(paths: list[Path], canaries: dict[str, str]) -> list[str]:
    hits = []
    needles = {name: value.encode() for name, value in canaries.items()}
    for root in paths:
        for path in [root] if root.is_file() else sorted(root.rglob("*")):
            if not path.is_file() or path.is_symlink():
                continue
            data = path.read_bytes()
            hits += [f"{name} in {path}" for name, value in needles.items() if value in data]
    return hits


def test_canary_credentials_appear_in_no_output_report_record_or_log(
        drill_project: DrillProject, drill_release: DrillRelease, registry: Registry, registry_proxy: FaultProxy,
        weldr_artifacts: EdgeArtifacts, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    from tests.fixtures.cloud_server import CloudBehaviour, running_cloud_server
    from tests.fixtures.gitlab_server import gl_approval, gl_user
    from tests.fixtures.jenkins_server import JENKINS_USER

    gitlab_token = f"glpat-CANARY-gitlab-{secrets.token_hex(8)}"
    jenkins_token = f"CANARY-jenkins-{secrets.token_hex(8)}"
    composer_token = f"CANARY-composer-offline-{secrets.token_hex(8)}"
    # the fake servers accept only these tokens: a gate that passes proves the canary was sent
    gl = request.getfixturevalue("gate_gitlab_server")
    gl.token = gitlab_token
    jk = request.getfixturevalue("jenkins_server")
    jenkins_user = JENKINS_USER
    jk.tokens[jenkins_user] = jenkins_token
    canaries = {
        "registry password": registry.password,
        "registry basic auth": base64.b64encode(f"{registry.user}:{registry.password}".encode()).decode(),
        "gitlab token": gitlab_token,
        "jenkins token": jenkins_token,
        "jenkins basic auth": base64.b64encode(f"{jenkins_user}:{jenkins_token}".encode()).decode(),
        "composer token": composer_token,
    }
    private_tmp = tmp_path / "tmp"  # every temporary file edgeci and skopeo write (authfiles included)
    private_tmp.mkdir()
    env = {**registry.env, "EDGECI_GITLAB_TOKEN": gitlab_token, "EDGECI_JENKINS_TOKEN": jenkins_token,
           "EDGECI_COMPOSER_TOKEN": composer_token, "TMPDIR": str(private_tmp)}

    p = drill_project
    p.env.update(env)
    job = "fleet/edge-promote"
    (p.dir / "edgeci.yaml").write_text(yaml.safe_dump({
        "registry": {"image": f"docker://{registry.host}/gateway", "tls_verify": False, "retry_backoff": 0.05,
                     "retry_times": 1},
        "boot_test": {"backend": "sysroot"},
        # the drills boot-test on sysroot: the gate of this fleet accepts it (production's default would not)
        "gate": {"gitlab": {"url": gl.url, "project": gl.project_path},
                 "jenkins": {"url": jk.url, "job": job, "user": jenkins_user},
                 "accepted_backends": ["qemu", "libvirt", "sysroot"]},
    }))
    git(p.dir, "add", "edgeci.yaml")
    git(p.dir, "commit", "-q", "-m", "edgeci.yaml: the fleet's registry, GitLab and Jenkins")

    # an infrastructure failure with --debug (traceback, every command line), credentials in play
    registry_proxy.failures = 1000
    r = p.cli("--debug", "push", BP, "--set", f"registry.image=docker://{registry_proxy.host}/gateway")
    assert r.rc == 2 and "Traceback" in r.err and "answered HTTP 500" in r.err, r

    r = p.cli("--debug", "push", BP)
    assert r.rc == 0, r
    assert "edgeci: edgeci.run: run: skopeo copy" in r.err and "--dest-authfile=" in r.err  # debug really on
    for args in (("stage", "serve", BP, "--debug"), ("--debug", "boot-test", BP)):
        r = p.cli(*args)
        assert r.rc == 0, r
    checksum = p.sections["compose"]["commit"]

    gl.add_deployment(101, 555, 900, gl_user(3, "dev", "Dev Eloper"),
                      [gl_approval(gl_user(5, "carol", "Carol Approver"), f"edgeci-approve {checksum}")])
    r = p.cli("--debug", "gate", BP, "--source", "gitlab", env={"CI_JOB_ID": "555"})
    assert r.rc == 0 and "gate approved" in r.out, r
    assert gl.requests
    build = jk.add_build(job, 12, triggered_by=("dev", "Dev Eloper"))
    build.outcomes.append({"input": "Promote", "action": "proceedEmpty", "user": "carol", "parameters": {}})
    r = p.cli("--debug", "gate", BP, "--source", "jenkins", "--approver", "carol", "--approved-checksum", checksum,
              "--build", "12")
    assert r.rc == 0 and "gate approved" in r.out, r
    assert jk.requests
    # the CI glue writes to GitLab and Jenkins with the same tokens (POST/PUT bodies, CSRF crumbs)
    ci_gitlab = request.getfixturevalue("gitlab_server")
    ci_gitlab.token = gitlab_token
    r = p.cli("--debug", "--set", f"gate.gitlab.url={ci_gitlab.url}", "--set", "gate.gitlab.project=platform/edge",
              "gitlab", "schedule", "--cron", "0 3 1 * *", "--variable", "EDGECI_REBUILD=all")
    assert r.rc == 0 and ci_gitlab.writes(), r
    ci_jenkins = request.getfixturevalue("jenkins_server")
    ci_jenkins.tokens[jenkins_user] = jenkins_token
    r = p.cli("--debug", "--set", f"gate.jenkins.url={ci_jenkins.url}", "jenkins", "job", "--name", "edge-images",
              "--repo", "https://git.example.com/edge.git", "--as", jenkins_user)
    assert r.rc == 0 and ci_jenkins.writes(), r
    # this project's own source is local: promote counts the signed approvals there (the CI sources' gates above
    # are what this drill exercises for secrets), so carol approves here too
    assert p.cli("--debug", "approve", BP, "--as", "carol").rc == 0
    for args in (("--debug", "promote", BP), ("--debug", "history", BP), ("--debug", "report", BP),
                 ("stage", "stop", BP, "--debug")):
        r = p.cli(*args)
        assert r.rc == 0, r
    assert p.prod().commit == checksum

    # The composer token: a compose through the Cloud API (OAuth2 refresh-token grant) with --debug.
    cloud = DrillProject(tmp_path / "cloud", env=env)
    shutil.copytree(p.dir / "blueprints", cloud.dir / "blueprints")
    with running_cloud_server(weldr_artifacts, CloudBehaviour(refresh_token=composer_token)) as srv:
        r = cloud.cli("--debug", "compose", BP, "--set", "composer.backend=cloud", "--set", f"composer.url={srv.url}",
                      "--set", f"composer.token_url={srv.url}/token",
                      "--set", "composer.repositories=https://cdn.example.com/rhel9/baseos/os/",
                      "--set", "composer.poll_interval=0.01", "--set", "composer.poll_max_interval=0.05")
        assert r.rc == 0, r
        assert srv.token_requests >= 1

    outputs = tmp_path / "outputs.txt"
    outputs.write_text("\n".join(f"{x}" for x in p.results + cloud.results))
    hits = _scan([outputs, p.dir, cloud.dir, private_tmp], canaries)
    assert hits == [], hits
    assert not list(private_tmp.rglob("auth.json")), "a temporary authfile was left behind"


# -- the drills share a project: a copy must never touch the original's stage server ------------------

def test_a_copied_project_leaves_the_originals_stage_server_alone(drill_project: DrillProject,
                                                                  drill_release: DrillRelease) -> None:
    from edgeci.stagehost import fetch_ref

    p = drill_project
    # a copy that carries the original's pid file too (cp -a of a project, CI artifacts on one runner)
    p.stage_dir.mkdir(parents=True)
    shutil.copy2(drill_release.project.stage_dir / "stageserver.json", p.stage_dir / "stageserver.json")
    r = p.cli("stage", "stop", BP)
    assert r.rc == 0 and "no stage server running" in r.out, r
    r = p.cli("stage", "serve", BP)
    assert r.rc == 0, r
    assert p.sections["stage"]["pid"] != drill_release.stage_pid
    assert fetch_ref(drill_release.stage_url, "rhel/9/x86_64/edge") == drill_release.new
