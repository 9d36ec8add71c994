"""edgeci.ci.gitlab_setup and `edgeci gitlab …`: the generated child pipeline, and python-gitlab calls against a
real HTTP server on 127.0.0.1 that speaks GitLab's endpoints (tests/fixtures/gitlab_server.py)."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgeci.ci.gitlab_setup import (
    MR_NOTE_MARKER,
    ChildOptions,
    Mode,
    Target,
    child_pipeline,
    detect_mode,
    mr_summary,
    render_yaml,
    targets_for,
)
from edgeci.cli import main
from edgeci.config import load_config
from edgeci.production import production_url
from edgeci.tools import ostree
from tests.fixtures.composed import edgeci_cli
from tests.fixtures.gitlab_server import GITLAB_TOKEN, FakeGitLab
from tests.fixtures.gitrepo import GitRepo, blueprint_text

TARGETS = [Target("gateway", "x86_64"), Target("kiosk", "aarch64")]


# ---------------------------------------------------------------------------------------------
# The child pipeline


def _walk_keys(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [str(k) for k in node] + [k for v in node.values() for k in _walk_keys(v)]
    if isinstance(node, list):
        return [k for v in node for k in _walk_keys(v)]
    return []


def _jobs(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in doc.items() if isinstance(v, dict) and "script" in v}


@pytest.mark.parametrize("mode", list(Mode))
def test_child_pipeline_has_one_job_per_target_and_stage_named_after_both(mode: Mode) -> None:
    doc = child_pipeline(TARGETS, ChildOptions(mode=mode, parent_pipeline_id="900"))
    jobs = _jobs(doc)
    for t in TARGETS:
        for stage in ("compose", "push", "stage", "boot-test"):
            job = jobs[f"{stage}:{t.blueprint}:{t.arch}"]
            assert job["stage"] == stage
            assert job["variables"] == {"EDGECI_BLUEPRINT": t.blueprint, "EDGECI_ARCH": t.arch}
            report = f"reports/{stage}-{t.blueprint}-{t.arch}.xml"
            art = job["artifacts"]
            assert art["when"] == "always"
            assert art["reports"]["junit"] == report
            assert report in art["paths"] and f"build/{t.blueprint}/{t.arch}/" in art["paths"]
    # compose takes the lint job's records from the parent pipeline; each later job needs the previous one
    assert jobs["compose:gateway:x86_64"]["needs"] == [{"pipeline": "$PARENT_PIPELINE_ID", "job": "edgeci-lint"}]
    assert doc["variables"]["PARENT_PIPELINE_ID"] == "900"
    assert jobs["boot-test:kiosk:aarch64"]["needs"] == [{"job": "stage:kiosk:aarch64", "artifacts": True}]
    assert "changes" not in _walk_keys(doc)


@pytest.mark.parametrize("mode", [Mode.DEFAULT_BRANCH, Mode.SCHEDULE])
def test_promote_is_manual_not_blocking_protected_and_serialised(mode: Mode) -> None:
    opts = ChildOptions(mode=mode, promote_tags=["ostree-prod"], environment_url="https://prod.example.com/repo")
    doc = child_pipeline(TARGETS, opts)
    assert doc["stages"][-1] == "promote"
    job = doc["promote:gateway:x86_64"]
    # issue 16: manual but not blocking, so the build pipeline ends green with the candidate ready for approval
    assert job["rules"] == [{"when": "manual", "allow_failure": True}]
    assert job["allow_failure"] is True
    assert job["interruptible"] is False  # a newer push never cancels a running promotion
    assert job["environment"] == {"name": "production", "deployment_tier": "production",
                                  "url": "https://prod.example.com/repo"}
    assert job["resource_group"] == "production"
    assert job["tags"] == ["ostree-prod"]
    assert job["needs"] == [{"job": "boot-test:gateway:x86_64", "artifacts": True}]
    assert job["script"][0].startswith("edgeci gate ") and job["script"][1].startswith("edgeci promote ")
    # a trust policy named by EDGECI_TRUST_POLICY is added (the host's /etc/edgeci/trust.yaml always applies)
    assert job["script"][1].endswith(' ${EDGECI_TRUST_POLICY:+--policy "$EDGECI_TRUST_POLICY"}')
    assert job["artifacts"]["reports"]["junit"] == ["reports/gate-gateway-x86_64.xml",
                                                    "reports/promote-gateway-x86_64.xml"]
    # the stage server is stopped by a successful promotion, never by a .post job before it
    assert job["script"][2] == 'edgeci stage stop "$EDGECI_BLUEPRINT" --arch "$EDGECI_ARCH"'
    assert not any(name.startswith("stage-stop:") for name in doc)
    assert "mr-note" not in doc


def test_merge_request_pipeline_stops_after_boot_test_and_posts_one_note() -> None:
    doc = child_pipeline(TARGETS, ChildOptions(mode=Mode.MERGE_REQUEST, mr_iid="12"))
    assert doc["stages"] == ["compose", "push", "stage", "boot-test"]
    assert not any(name.startswith("promote:") for name in doc)
    note = doc["mr-note"]
    assert note["stage"] == ".post" and note["when"] == "always"
    assert note["needs"] == [{"job": "boot-test:gateway:x86_64", "artifacts": True},
                             {"job": "boot-test:kiosk:aarch64", "artifacts": True}]
    assert note["variables"] == {"EDGECI_MR_IID": "12", "EDGECI_TARGETS": "gateway/x86_64 kiosk/aarch64"}
    assert note["allow_failure"] is True
    # the MR's stage lives until the MR is merged or closed: its environment's on_stop job stops it
    stop = doc["stage-stop:gateway:x86_64"]
    assert stop["environment"] == {"name": "review/mr-12/gateway-x86_64", "action": "stop"}
    assert stop["rules"] == [{"when": "manual", "allow_failure": True}]
    assert stop["script"] == ['edgeci stage stop "$EDGECI_BLUEPRINT" --arch "$EDGECI_ARCH"']
    assert doc["stage:gateway:x86_64"]["environment"] == {
        "name": "review/mr-12/gateway-x86_64", "action": "start", "on_stop": "stage-stop:gateway:x86_64",
        "auto_stop_in": "1 week"}


def test_branch_pipeline_has_no_note_and_no_promote() -> None:
    doc = child_pipeline(TARGETS[:1], ChildOptions(mode=Mode.BRANCH))
    assert set(_jobs(doc)) == {"compose:gateway:x86_64", "push:gateway:x86_64", "stage:gateway:x86_64",
                               "boot-test:gateway:x86_64", "stage-stop:gateway:x86_64"}
    assert doc["compose:gateway:x86_64"]["needs"] == []  # no parent pipeline id: nothing to fetch


def test_wait_mode_waits_for_the_stage_host_and_starts_no_server() -> None:
    doc = child_pipeline(TARGETS[:1], ChildOptions(mode=Mode.SCHEDULE, stage_action="wait"))
    assert doc["stage:gateway:x86_64"]["script"] == ['edgeci stage wait "$EDGECI_BLUEPRINT" --arch "$EDGECI_ARCH"']
    assert all("stage stop" not in line for job in _jobs(doc).values() for line in job["script"])


def test_image_tags_and_install_reach_every_job() -> None:
    opts = ChildOptions(mode=Mode.DEFAULT_BRANCH, image="registry.example.com/edgeci:1", build_tags=["kvm"],
                        promote_tags=["prod-host"], install="-e .[gitlab]")
    jobs = _jobs(child_pipeline(TARGETS[:1], opts))
    for name, job in jobs.items():
        assert job["image"] == "registry.example.com/edgeci:1"
        assert job["tags"] == (["prod-host"] if name.startswith("promote:") else ["kvm"])
        assert job["before_script"] == [
            "command -v edgeci >/dev/null 2>&1 || \"${EDGECI_PYTHON:-python3}\" -m pip install -e '.[gitlab]'"]


def test_compose_builds_on_top_of_production_when_there_is_one(tmp_path: Path) -> None:
    cfg = load_config(None, env={}, root=tmp_path)
    assert production_url(cfg, "gateway", "x86_64") == ""  # first release: no production repo yet
    repo = tmp_path / "build" / "prod" / "repo"
    ostree.init(repo)
    assert production_url(cfg, "gateway", "x86_64") == ""  # a repo without the blueprint's ref
    tree = tmp_path / "tree"
    (tree / "usr").mkdir(parents=True)
    (tree / "usr" / "os-release").write_text("VERSION=1\n")
    ostree.commit(repo, cfg.ref("gateway", "x86_64"), tree_dir=tree, subject="1.0.0")
    assert production_url(cfg, "gateway", "x86_64") == repo.resolve().as_uri()
    cfg = load_config(None, env={}, root=tmp_path, overrides={"prod.url": "https://ostree.example.com/repo"})
    assert production_url(cfg, "kiosk", "x86_64") == "https://ostree.example.com/repo"

    opts = ChildOptions(mode=Mode.SCHEDULE, parent_urls={TARGETS[0]: "https://ostree.example.com/repo"})
    doc = child_pipeline(TARGETS, opts)
    gateway, kiosk = doc["compose:gateway:x86_64"], doc["compose:kiosk:aarch64"]
    assert gateway["variables"]["EDGECI_PARENT_URL"] == "https://ostree.example.com/repo"
    # the monthly rebuild composes an unchanged blueprint as production's next patch version
    assert gateway["script"] == [
        'edgeci compose "$EDGECI_BLUEPRINT" --arch "$EDGECI_ARCH" --url "$EDGECI_PARENT_URL" --rebuild']
    assert kiosk["script"] == ['edgeci compose "$EDGECI_BLUEPRINT" --arch "$EDGECI_ARCH" --rebuild']
    pushed = child_pipeline(TARGETS, ChildOptions(mode=Mode.DEFAULT_BRANCH, parent_urls=opts.parent_urls))
    assert pushed["compose:gateway:x86_64"]["script"] == [
        'edgeci compose "$EDGECI_BLUEPRINT" --arch "$EDGECI_ARCH" --url "$EDGECI_PARENT_URL"']


def test_nothing_changed_is_still_a_valid_pipeline() -> None:
    doc = child_pipeline([], ChildOptions(mode=Mode.DEFAULT_BRANCH))
    assert list(_jobs(doc)) == ["nothing-to-build"]
    assert doc["nothing-to-build"]["stage"] in doc["stages"]


def test_render_yaml_round_trips_with_a_comment_header() -> None:
    doc = child_pipeline(TARGETS, ChildOptions(mode=Mode.SCHEDULE))
    text = render_yaml(doc, header="Generated\nall blueprints")
    assert text.startswith("# Generated\n# all blueprints\n")
    assert yaml.safe_load(text) == doc


@pytest.mark.parametrize(("env", "mode"), [
    ({"CI_PIPELINE_SOURCE": "schedule", "CI_COMMIT_BRANCH": "main", "CI_DEFAULT_BRANCH": "main"}, Mode.SCHEDULE),
    ({"CI_PIPELINE_SOURCE": "merge_request_event", "CI_MERGE_REQUEST_IID": "3"}, Mode.MERGE_REQUEST),
    ({"CI_PIPELINE_SOURCE": "push", "CI_COMMIT_BRANCH": "main", "CI_DEFAULT_BRANCH": "main"}, Mode.DEFAULT_BRANCH),
    ({"CI_PIPELINE_SOURCE": "web", "CI_COMMIT_BRANCH": "main", "CI_DEFAULT_BRANCH": "main"}, Mode.DEFAULT_BRANCH),
    ({"CI_PIPELINE_SOURCE": "push", "CI_COMMIT_BRANCH": "feature", "CI_DEFAULT_BRANCH": "main"}, Mode.BRANCH),
    ({"CI_PIPELINE_SOURCE": "parent_pipeline"}, Mode.BRANCH),
])
def test_detect_mode(env: dict[str, str], mode: Mode) -> None:
    assert detect_mode(env) is mode


def test_options_from_the_template_variables(tmp_path: Path) -> None:
    cfg = load_config(None, env={}, root=tmp_path)
    env = {"EDGECI_BUILD_TAGS": "kvm, big", "EDGECI_PROMOTE_TAGS": "prod", "EDGECI_IMAGE": "img:1",
           "EDGECI_INSTALL": "edgeci[gitlab]", "CI_PIPELINE_ID": "55", "CI_PIPELINE_SOURCE": "merge_request_event",
           "CI_MERGE_REQUEST_IID": "8", "EDGECI_RESOURCE_GROUP": "prod-repo"}
    opts = ChildOptions.from_env(cfg, env)
    assert (opts.build_tags, opts.promote_tags, opts.image, opts.install) == (["kvm", "big"], ["prod"], "img:1",
                                                                              "edgeci[gitlab]")
    assert (opts.parent_pipeline_id, opts.mode, opts.mr_iid, opts.resource_group) == (
        "55", Mode.MERGE_REQUEST, "8", "prod-repo")
    assert opts.stage_action == "serve"


# ---------------------------------------------------------------------------------------------
# `edgeci gitlab child-pipeline` on real git history


def _two_blueprints(repo: GitRepo) -> str:
    repo.write("blueprints/gateway.toml", blueprint_text("gateway", "1.0.0"))
    repo.write("blueprints/kiosk.toml", blueprint_text("kiosk", "1.0.0"))
    base = repo.commit("two blueprints")
    repo.write("blueprints/gateway.toml", blueprint_text("gateway", "1.0.1"))
    repo.commit("gateway 1.0.1")
    return base


def _child(repo: GitRepo, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
           *args: str) -> tuple[int, dict[str, Any], str]:
    monkeypatch.chdir(repo.path)
    rc = main(["gitlab", "child-pipeline", *args])
    out = capsys.readouterr()
    return rc, (yaml.safe_load(out.out) if rc == 0 and out.out.strip() else {}), out.out + out.err


def test_child_pipeline_command_builds_only_what_the_push_changed(
        git_repo: GitRepo, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    base = _two_blueprints(git_repo)
    for var in ("CI_PIPELINE_SOURCE", "CI_MERGE_REQUEST_IID", "CI_COMMIT_BRANCH", "CI_PIPELINE_ID"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CI_PIPELINE_SOURCE", "push")
    monkeypatch.setenv("CI_COMMIT_BRANCH", "main")
    monkeypatch.setenv("CI_DEFAULT_BRANCH", "main")
    monkeypatch.setenv("CI_PIPELINE_ID", "1234")
    rc, doc, out = _child(git_repo, monkeypatch, capsys, "--base", base)
    assert rc == 0, out
    assert {k for k in _jobs(doc)} == {f"{s}:gateway:x86_64" for s in ("compose", "push", "stage", "boot-test",
                                                                        "promote")}
    assert doc["variables"] == {"EDGECI_PIPELINE_MODE": "default_branch", "PARENT_PIPELINE_ID": "1234"}
    assert "gateway: blueprints/gateway.toml modified" in out


def test_child_pipeline_command_all_and_first_push_build_everything(
        git_repo: GitRepo, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _two_blueprints(git_repo)
    rc, doc, _ = _child(git_repo, monkeypatch, capsys, "--all", "--mode", "schedule")
    assert rc == 0
    assert {"compose:gateway:x86_64", "compose:kiosk:x86_64", "promote:kiosk:x86_64"} <= set(doc)
    rc, doc, out = _child(git_repo, monkeypatch, capsys, "--base", "0" * 40, "--mode", "branch")
    assert rc == 0
    assert "building every blueprint" in out
    assert {"compose:gateway:x86_64", "compose:kiosk:x86_64"} <= set(doc)
    assert not any(k.startswith("promote:") for k in doc)


def test_child_pipeline_command_writes_a_file_and_reports_a_bad_base(
        git_repo: GitRepo, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _two_blueprints(git_repo)
    rc, _, out = _child(git_repo, monkeypatch, capsys, "--base", "HEAD~1", "--mode", "merge_request",
                        "--mr-iid", "4", "--output", "child.yml")
    assert rc == 0 and "1 target (gateway/x86_64)" in out
    doc = yaml.safe_load((git_repo.path / "child.yml").read_text())
    assert doc["mr-note"]["variables"]["EDGECI_MR_IID"] == "4"
    rc, _, out = _child(git_repo, monkeypatch, capsys, "--base", "no-such-revision")
    assert rc == 2
    assert "no-such-revision" in out and "does not exist" in out
    assert out.count("\n") == 1  # one line


# ---------------------------------------------------------------------------------------------
# The API commands against the fake GitLab


@pytest.fixture
def gl_cli(gitlab_server: FakeGitLab, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
           capsys: pytest.CaptureFixture[str]):  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EDGECI_GITLAB_TOKEN", GITLAB_TOKEN)
    for var in ("CI_SERVER_URL", "CI_PROJECT_ID", "CI_MERGE_REQUEST_IID", "EDGECI_MR_IID", "EDGECI_TARGETS"):
        monkeypatch.delenv(var, raising=False)

    def run(*args: str) -> tuple[int, str]:
        rc = main(["--set", f"gate.gitlab.url={gitlab_server.url}", "--set", "gate.gitlab.project=platform/edge",
                   "gitlab", *args])
        out = capsys.readouterr()
        return rc, out.out + out.err

    return run


def test_schedule_is_created_then_a_second_run_writes_nothing(gitlab_server: FakeGitLab, gl_cli) -> None:  # type: ignore[no-untyped-def]
    rc, out = gl_cli("schedule", "--cron", "0 3 1 * *", "--variable", "EDGECI_REBUILD=all")
    assert rc == 0, out
    posts = [(r.path, r.body) for r in gitlab_server.writes()]
    assert posts == [
        ("/projects/42/pipeline_schedules", {"description": "edgeci: monthly rebuild of every blueprint",
                                             "ref": "main", "cron": "0 3 1 * *", "cron_timezone": "UTC",
                                             "active": True}),
        ("/projects/42/pipeline_schedules/1/variables", {"key": "EDGECI_REBUILD", "value": "all",
                                                         "variable_type": "env_var"}),
        # the names the plan job copies into the child pipeline (issue 16: schedule variables reach child jobs)
        ("/projects/42/pipeline_schedules/1/variables", {"key": "EDGECI_FORWARD_VARIABLES",
                                                         "value": "EDGECI_REBUILD", "variable_type": "env_var"}),
    ]
    gitlab_server.clear_log()
    rc, out = gl_cli("schedule", "--cron", "0 3 1 * *", "--variable", "EDGECI_REBUILD=all")
    assert rc == 0, out
    assert gitlab_server.writes() == []
    assert "nothing to change" in out
    # it did look: the project, the list and the schedule with its variables
    assert [r.path for r in gitlab_server.log] == ["/projects/platform/edge", "/projects/42/pipeline_schedules",
                                                   "/projects/42/pipeline_schedules/1"]


def test_schedule_update_puts_only_what_differs(gitlab_server: FakeGitLab, gl_cli) -> None:  # type: ignore[no-untyped-def]
    gitlab_server.add_schedule("edgeci: monthly rebuild of every blueprint", ref="main", cron="0 3 1 * *",
                               variables={"EDGECI_REBUILD": "all", "MANUAL": "kept"})
    rc, out = gl_cli("schedule", "--cron", "30 2 1 * *", "--variable", "EDGECI_REBUILD=everything",
                     "--variable", "NEW=1")
    assert rc == 0, out
    writes = [(r.method, r.path, r.body) for r in gitlab_server.writes()]
    assert writes == [
        ("PUT", "/projects/42/pipeline_schedules/1", {"cron": "30 2 1 * *"}),
        ("PUT", "/projects/42/pipeline_schedules/1/variables/EDGECI_REBUILD",
         {"key": "EDGECI_REBUILD", "value": "everything", "variable_type": "env_var"}),
        ("POST", "/projects/42/pipeline_schedules/1/variables", {"key": "NEW", "value": "1",
                                                                 "variable_type": "env_var"}),
        ("POST", "/projects/42/pipeline_schedules/1/variables", {"key": "EDGECI_FORWARD_VARIABLES",
                                                                 "value": "EDGECI_REBUILD NEW",
                                                                 "variable_type": "env_var"}),
    ]
    assert "variable MANUAL: unchanged (not managed by edgeci" in out
    gitlab_server.clear_log()
    rc, out = gl_cli("schedule", "--cron", "30 2 1 * *", "--variable", "EDGECI_REBUILD=everything",
                     "--variable", "NEW=1", "--prune-variables")
    assert rc == 0
    assert [(r.method, r.path) for r in gitlab_server.writes()] == [
        ("DELETE", "/projects/42/pipeline_schedules/1/variables/MANUAL")]


def test_schedule_found_on_a_later_page_is_not_created_again(gitlab_server: FakeGitLab, gl_cli) -> None:  # type: ignore[no-untyped-def]
    for i in range(45):
        gitlab_server.add_schedule(f"nightly job {i}")
    ours = gitlab_server.add_schedule("edgeci: monthly rebuild of every blueprint", ref="refs/heads/main",
                                      cron="0 3 1 * *")
    rc, out = gl_cli("schedule", "--cron", "0 3 1 * *", "--ref", "main")
    assert rc == 0, out
    assert gitlab_server.writes() == []
    pages = [r.query.get("page", ["1"])[0] for r in gitlab_server.requests("GET", "/projects/42/pipeline_schedules")
             if r.path == "/projects/42/pipeline_schedules"]
    assert pages == ["1", "2", "3"]
    assert f"#{ours['id']}" in out


def test_schedule_refuses_duplicates_and_bad_cron(gitlab_server: FakeGitLab, gl_cli) -> None:  # type: ignore[no-untyped-def]
    rc, out = gl_cli("schedule", "--cron", "0 3 1 *")
    assert rc == 2 and "has 4 fields" in out
    gitlab_server.add_schedule("edgeci: monthly rebuild of every blueprint")
    gitlab_server.add_schedule("edgeci: monthly rebuild of every blueprint")
    rc, out = gl_cli("schedule", "--cron", "0 3 1 * *")
    assert rc == 2 and "2 pipeline schedules are named" in out and "#1, #2" in out
    assert gitlab_server.writes() == []


def test_protected_environment_created_with_approval_rules_then_unchanged(gitlab_server: FakeGitLab,
                                                                           gl_cli) -> None:  # type: ignore[no-untyped-def]
    rc, out = gl_cli("protect-environment", "--approvals", "2", "--group", "platform/release-managers")
    assert rc == 0, out
    assert [(r.method, r.path, r.body) for r in gitlab_server.writes()] == [
        ("POST", "/projects/42/protected_environments",
         {"name": "production", "deploy_access_levels": [{"access_level": 40}],
          "approval_rules": [{"group_id": 77, "required_approvals": 2}]})]
    assert gitlab_server.requests("GET", "/groups/platform/release-managers")
    gitlab_server.clear_log()
    rc, out = gl_cli("protect-environment", "--approvals", "2", "--group", "platform/release-managers")
    assert rc == 0 and "unchanged" in out
    assert gitlab_server.writes() == []


def test_protected_environment_changes_are_put_as_additions_and_destroys(gitlab_server: FakeGitLab,
                                                                         gl_cli) -> None:  # type: ignore[no-untyped-def]
    assert gl_cli("protect-environment", "--approvals", "1", "--group", "77")[0] == 0
    env = gitlab_server.protected["production"]
    group_rule = env["approval_rules"][0]["id"]
    maintainers = env["deploy_access_levels"][0]["id"]
    gitlab_server.clear_log()
    rc, out = gl_cli("protect-environment", "--approvals", "3", "--group", "77")
    assert rc == 0, out
    assert [r.body for r in gitlab_server.writes()] == [{"approval_rules": [{"id": group_rule,
                                                                            "required_approvals": 3}]}]
    gitlab_server.clear_log()
    rc, out = gl_cli("protect-environment", "--approvals", "1", "--user", "alice", "--deploy-access", "developer")
    assert rc == 0, out
    (put,) = gitlab_server.writes()
    assert put.method == "PUT" and put.path == "/projects/42/protected_environments/production"
    assert put.body == {
        "deploy_access_levels": [{"access_level": 30}, {"id": maintainers, "_destroy": True}],
        "approval_rules": [{"user_id": 5, "required_approvals": 1}, {"id": group_rule, "_destroy": True}],
    }
    rules = gitlab_server.protected["production"]["approval_rules"]
    assert [(r["user_id"], r["required_approvals"]) for r in rules] == [(5, 1)]
    gitlab_server.clear_log()
    assert gl_cli("protect-environment", "--approvals", "1", "--user", "alice", "--deploy-access", "developer")[0] == 0
    assert gitlab_server.writes() == []


def test_protected_environment_unknown_user_is_one_clear_line(gitlab_server: FakeGitLab, gl_cli) -> None:  # type: ignore[no-untyped-def]
    rc, out = gl_cli("protect-environment", "--user", "nobody")
    assert rc == 2
    assert "user 'nobody' not found" in out
    assert gitlab_server.writes() == []


def _records(root: Path, *, boot_outcome: str = "passed") -> None:
    rec = {"schema": 1, "sections": {
        "blueprint": {"name": "gateway", "version": "1.0.1", "status": "passed"},
        "lint": {"findings": [], "status": "passed"},
        "compose": {"commit": "ab" * 32, "status": "passed"},
        "push": {"digest": "sha256:" + "cd" * 32, "status": "passed"},
        "stage": {"url": "http://127.0.0.1:1/repo", "status": "passed"},
        "boot_test": {"backend": "qemu", "status": boot_outcome, "delta_bytes": 128000, "full_bytes": 1500000,
                      "scenarios": {
                          "install": {"outcome": boot_outcome, "checks": [
                              {"name": "hostname", "outcome": "passed"},
                              {"name": "motd", "outcome": boot_outcome}]},
                          "upgrade": {"outcome": "passed", "checks": []},
                          "rollback": {"outcome": "skipped", "reason": "production is empty"}}},
    }}
    path = root / "build" / "gateway" / "x86_64" / "record.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec))
    (root / "reports").mkdir(exist_ok=True)
    failure = '<failure message="motd missing">out</failure>' if boot_outcome != "passed" else ""
    (root / "reports" / "boot-test-gateway-x86_64.xml").write_text(
        '<?xml version="1.0"?><testsuites><testsuite name="boot-test.install">'
        '<testcase classname="edgeci.boot-test.gateway.x86_64.install" name="hostname"/>'
        f'<testcase classname="edgeci.boot-test.gateway.x86_64.install" name="motd">{failure}</testcase>'
        '</testsuite></testsuites>')


def test_mr_summary_shows_every_stage_and_the_failed_check(tmp_path: Path) -> None:
    _records(tmp_path, boot_outcome="failed")
    cfg = load_config(None, env={}, root=tmp_path)
    body = mr_summary(cfg, [Target("gateway", "x86_64"), Target("kiosk", "x86_64")],
                      env={"CI_PIPELINE_URL": "https://gitlab.example.com/p/-/pipelines/9", "CI_COMMIT_SHA": "f" * 40})
    assert body.startswith(MR_NOTE_MARKER + "\n")
    assert ("| gateway | x86_64 | 1.0.1 | `abababababab` | ✅ passed | ✅ passed | ✅ passed | ✅ passed | "
            "❌ failed (1/2) |") in body
    assert "| kiosk | x86_64 | ? | `—` | — not run |" in body
    assert "- install: check `motd` failed" in body
    assert "rollback ➖ (production is empty)" in body
    assert "update delta 125.0 KB of 1.4 MB" in body
    assert "https://gitlab.example.com/p/-/pipelines/9 at `ffffffff`" in body


def test_mr_note_posted_once_then_updated_never_duplicated(gitlab_server: FakeGitLab, gl_cli,  # type: ignore[no-untyped-def]
                                                           tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(30):  # the note has to be found past the first page of comments
        gitlab_server.add_note(7, f"review comment {i}")
    gitlab_server.add_note(7, f"{MR_NOTE_MARKER} in a system note", system=True)
    quoted = gitlab_server.add_note(7, f"> {MR_NOTE_MARKER} quoted by a reviewer")  # not ours: never edited
    _records(tmp_path)
    monkeypatch.setenv("CI_MERGE_REQUEST_IID", "7")
    rc, out = gl_cli("mr-note", "--targets", "gateway/x86_64", "--output", "reports/mr-summary.md")
    assert rc == 0, out
    assert [(r.method, r.path) for r in gitlab_server.writes()] == [("POST", "/projects/42/merge_requests/7/notes")]
    posted = gitlab_server.writes()[0].body["body"]
    assert posted == (tmp_path / "reports" / "mr-summary.md").read_text()

    gitlab_server.clear_log()
    rc, out = gl_cli("mr-note", "--targets", "gateway/x86_64")
    assert rc == 0 and "unchanged" in out
    assert gitlab_server.writes() == []

    _records(tmp_path, boot_outcome="failed")  # a re-run of the pipeline with another result
    rc, out = gl_cli("mr-note", "--targets", "gateway/x86_64")
    assert rc == 0 and "updated" in out
    (put,) = gitlab_server.writes()
    assert put.method == "PUT" and put.path.startswith("/projects/42/merge_requests/7/notes/")
    ours = [n for n in gitlab_server.notes[7] if n["author"]["username"] == "edgeci-bot"]
    assert len(ours) == 1 and "❌ failed" in ours[0]["body"] and ours[0]["body"].startswith(MR_NOTE_MARKER)
    assert quoted["body"] == f"> {MR_NOTE_MARKER} quoted by a reviewer"


def test_mr_note_needs_an_iid_and_an_existing_merge_request(gitlab_server: FakeGitLab, gl_cli) -> None:  # type: ignore[no-untyped-def]
    rc, out = gl_cli("mr-note")
    assert rc == 2 and "no merge request to comment on" in out
    rc, out = gl_cli("mr-note", "--iid", "999")
    assert rc == 2 and "merge request !999 not found (404)" in out
    rc, out = gl_cli("mr-note", "--dry-run")
    assert rc == 0 and MR_NOTE_MARKER in out
    assert gitlab_server.writes() == []


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_bad_token_unreachable_server_and_missing_settings_are_one_line_never_the_token(
        gitlab_server: FakeGitLab, tmp_path: Path) -> None:
    wrong = "glpat-WrongTokenCanary-987654321"
    common = ["--set", "gate.gitlab.project=42", "gitlab", "schedule", "--cron", "0 3 1 * *"]
    r = edgeci_cli(["--set", f"gate.gitlab.url={gitlab_server.url}", *common], tmp_path,
                   env={"EDGECI_GITLAB_TOKEN": wrong})
    assert r.returncode == 2
    assert "GitLab refused the token (401)" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert wrong not in r.stdout + r.stderr
    r = edgeci_cli(["--set", f"gate.gitlab.url=http://127.0.0.1:{_closed_port()}", *common], tmp_path,
                   env={"EDGECI_GITLAB_TOKEN": wrong})
    assert r.returncode == 2 and "cannot reach GitLab" in r.stderr
    r = edgeci_cli(["--set", f"gate.gitlab.url={gitlab_server.url}", *common], tmp_path)
    assert r.returncode == 2 and "EDGECI_GITLAB_TOKEN" in r.stderr
    r = edgeci_cli(["gitlab", "schedule", "--cron", "0 3 1 * *"], tmp_path, env={"EDGECI_GITLAB_TOKEN": wrong})
    assert r.returncode == 2 and "gate.gitlab.url" in r.stderr
    assert gitlab_server.writes() == []


# ---------------------------------------------------------------------------------------------
# Issue 16: keys per job, review candidates, forwarded variables, retries, resource group


def test_signing_keys_reach_only_their_jobs_through_environment_scopes() -> None:
    doc = child_pipeline(TARGETS[:1], ChildOptions(mode=Mode.DEFAULT_BRANCH))
    envs = {name: (job.get("environment") or {}).get("name") for name, job in _jobs(doc).items()}
    # EDGECI_COMPOSE_KEY is scoped to edgeci/compose, EDGECI_BOOT_TEST_KEY to edgeci/boot-test
    assert envs == {"compose:gateway:x86_64": "edgeci/compose", "push:gateway:x86_64": None,
                    "stage:gateway:x86_64": None, "boot-test:gateway:x86_64": "edgeci/boot-test",
                    "promote:gateway:x86_64": "production"}
    for name in ("compose:gateway:x86_64", "boot-test:gateway:x86_64"):
        assert doc[name]["environment"]["action"] == "prepare"  # no deployment recorded
    # nothing names a key in the YAML: the keys are File variables of the project, never job variables
    assert "_KEY" not in json.dumps(doc)


def test_the_image_signing_key_reaches_only_the_push_jobs_of_image_mode_blueprints(tmp_path: Path) -> None:
    (tmp_path / "blueprints" / "gateway-bootc").mkdir(parents=True)
    (tmp_path / "blueprints" / "gateway-bootc" / "Containerfile").write_text("FROM localhost/base@sha256:" + "0" * 64)
    (tmp_path / "blueprints" / "gateway.toml").write_text(blueprint_text("gateway", "1.0.0"))
    (tmp_path / "edgeci.yaml").write_text("")
    targets = targets_for(load_config(tmp_path / "edgeci.yaml"), ["gateway", "gateway-bootc"])
    assert [(t.blueprint, t.image) for t in targets] == [("gateway", False), ("gateway-bootc", True)]
    doc = child_pipeline(targets, ChildOptions(mode=Mode.DEFAULT_BRANCH))
    assert doc["push:gateway-bootc:x86_64"]["environment"] == {"name": "edgeci/image-signing", "action": "prepare"}
    assert "environment" not in doc["push:gateway:x86_64"]  # an ostree push signs nothing
    # the image's other jobs are the ostree kind's, with the same keys where they were
    for stage, env in (("compose", "edgeci/compose"), ("boot-test", "edgeci/boot-test")):
        assert doc[f"{stage}:gateway-bootc:x86_64"]["environment"]["name"] == env
    assert {j.split(":")[0] for j in doc if j.endswith("gateway-bootc:x86_64")} == \
        {j.split(":")[0] for j in doc if j.endswith(":gateway:x86_64")}
    assert "_KEY" not in json.dumps(doc)


def test_every_edgeci_job_retries_infrastructure_failures_only_and_caches_pip() -> None:
    doc = child_pipeline(TARGETS[:1], ChildOptions(mode=Mode.MERGE_REQUEST, install="edgeci[gitlab]", mr_iid="3"))
    for name, job in _jobs(doc).items():
        assert job["retry"] == {"max": 2, "when": ["runner_system_failure", "stuck_or_timeout_failure",
                                                   "api_failure"]}, name
        if name != "mr-note":
            assert job["cache"] == {"key": "edgeci-pip", "paths": [".cache/pip"], "when": "always"}
            assert job["variables"]["PIP_CACHE_DIR"] == "$CI_PROJECT_DIR/.cache/pip"
    assert "cache" not in child_pipeline(TARGETS[:1], ChildOptions(mode=Mode.BRANCH))["compose:gateway:x86_64"]


@pytest.mark.parametrize(("mode", "name", "tag"), [(Mode.MERGE_REQUEST, "mr-12", "mr-12-0a1b2c3d"),
                                                   (Mode.BRANCH, "branch-feature-x", "branch-feature-x-0a1b2c3d")])
def test_review_candidates_get_their_own_image_tag_and_stage(mode: Mode, name: str, tag: str) -> None:
    opts = ChildOptions(mode=mode, mr_iid="12", commit_sha="0a1b2c3d", ref_slug="feature-x",
                        registry_image="docker://quay.example.com/edge/{blueprint}", stage_dir="/srv/stage/{blueprint}",
                        stage_action="wait")
    doc = child_pipeline(TARGETS[:1], opts)
    assert {k: v for k, v in doc["variables"].items() if k.startswith(("EDGECI_REGISTRY", "EDGECI_STAGE"))} == {
        "EDGECI_REGISTRY_IMAGE": "docker://quay.example.com/edge/{blueprint}-review",
        "EDGECI_REGISTRY_TAGS": tag, "EDGECI_REGISTRY_RELEASE_TAGS": "false",
        "EDGECI_STAGE_MODE": "serve", "EDGECI_STAGE_URL": "", "EDGECI_STAGE_PORT": "0",
        "EDGECI_STAGE_DIR": f"/srv/stage/{{blueprint}}-{name}"}
    # the shared stage host serves releases only: a review candidate is served by edgeci on the runner
    assert doc["stage:gateway:x86_64"]["script"] == ['edgeci stage serve "$EDGECI_BLUEPRINT" --arch "$EDGECI_ARCH"']
    # and really is its own: the configuration the jobs load says so
    cfg = load_config(env={k: v for k, v in doc["variables"].items() if k.startswith("EDGECI_")})
    assert cfg.registry.image.endswith("-review") and cfg.registry.tags == [tag]
    # only the default branch pushes the release tags (<version>, latest): a review candidate its own tag alone
    from edgeci.registry import tags_for

    assert cfg.registry.release_tags is False and tags_for(cfg, "gateway", "1.0.1", "x86_64") == [tag]
    assert cfg.stage.dir.endswith(name) and cfg.stage.mode == "serve" and cfg.stage.port == 0


def test_release_pipelines_keep_the_release_image_and_stage() -> None:
    for mode in (Mode.DEFAULT_BRANCH, Mode.SCHEDULE):
        doc = child_pipeline(TARGETS[:1], ChildOptions(mode=mode, commit_sha="0a1b2c3d"))
        assert not any(k.startswith(("EDGECI_REGISTRY", "EDGECI_STAGE")) for k in doc["variables"])


def test_schedule_variables_are_forwarded_to_the_child_but_never_secrets(
        git_repo: GitRepo, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from edgeci.ci.gitlab_setup import forwarded

    env = {"EDGECI_FORWARD_VARIABLES": "EDGECI_NOTIFY, EDGECI_BOOT_TEST_BACKEND MY_TOKEN ABSENT",
           "EDGECI_NOTIFY": "ops", "EDGECI_BOOT_TEST_BACKEND": "sysroot", "MY_TOKEN": "s3cret"}
    assert forwarded(env) == ({"EDGECI_NOTIFY": "ops", "EDGECI_BOOT_TEST_BACKEND": "sysroot"}, ["MY_TOKEN"])
    _two_blueprints(git_repo)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    rc, doc, out = _child(git_repo, monkeypatch, capsys, "--all", "--mode", "schedule")
    assert rc == 0
    assert doc["variables"]["EDGECI_NOTIFY"] == "ops" and doc["variables"]["EDGECI_BOOT_TEST_BACKEND"] == "sysroot"
    assert "s3cret" not in out and "MY_TOKEN looks like a secret" in out


def test_schedule_refuses_a_secret_looking_variable(gitlab_server: FakeGitLab, gl_cli) -> None:  # type: ignore[no-untyped-def]
    rc, out = gl_cli("schedule", "--cron", "0 3 1 * *", "--variable", "REGISTRY_PASSWORD=x")
    assert rc == 2 and "REGISTRY_PASSWORD looks like a secret" in out
    assert gitlab_server.writes() == []


def _resource_groups(server: FakeGitLab, groups: dict[str, dict[str, Any]]) -> None:
    """GitLab's resource group API (GET, PUT process_mode) on the fake server."""
    from tests.fixtures.httpserver import Request

    def resource_group(req: Request, project: str, key: str) -> None:
        group = groups.get(key)
        if group is None:
            return req.json({"message": "404 Not found"}, 404)
        if req.command == "PUT":
            body = req.body_json() if "json" in (req.headers.get("Content-Type") or "") else {}
            if body.get("process_mode") not in ("unordered", "oldest_first", "newest_first", "newest_ready_first"):
                return req.json({"message": "process_mode is invalid"}, 400)
            group["process_mode"] = body["process_mode"]
        return req.json(group)

    server.add_route("*", r"/api/v4/projects/(?P<project>[^/]+)/resource_groups/(?P<key>[^/]+)", resource_group)


def test_protect_environment_sets_the_resource_group_to_oldest_first_once(gitlab_server: FakeGitLab,
                                                                        gl_cli) -> None:  # type: ignore[no-untyped-def]
    groups: dict[str, dict[str, Any]] = {}
    _resource_groups(gitlab_server, groups)
    rc, out = gl_cli("protect-environment", "--approvals", "1")
    assert rc == 0, out
    assert "resource group 'production': unchanged (GitLab creates it when a promote job first runs" in out
    groups["production"] = {"id": 3, "key": "production", "process_mode": "unordered"}
    gitlab_server.clear_log()
    rc, out = gl_cli("protect-environment", "--approvals", "1")
    assert rc == 0, out
    assert [(w.method, w.path, w.body) for w in gitlab_server.writes()] == [
        ("PUT", "/projects/42/resource_groups/production", {"process_mode": "oldest_first"})]
    assert "process mode unordered -> oldest_first" in out and groups["production"]["process_mode"] == "oldest_first"
    gitlab_server.clear_log()
    rc, out = gl_cli("protect-environment", "--approvals", "1")
    assert rc == 0 and gitlab_server.writes() == []
