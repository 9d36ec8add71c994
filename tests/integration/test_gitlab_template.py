"""The GitLab template, its component form and this repository's .gitlab-ci.yml.

Structure checks on the YAML (promotion manual and never `rules: changes`, artifacts when: always with
reports junit and paths), then real gitlab-ci-local runs (shell executor) on a git copy of the project:
the lint and plan jobs of a push and of a merge request, the generated child pipeline validated by
gitlab-ci-local's schema, and the component expanded with its default inputs equal to the template.
The whole pipeline, promotion included, is tests/e2e/test_gitlab_pipeline.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgeci.ci.gitlab_setup import MR_NOTE_MARKER
from tests.fixtures.gitlab_server import (
    GITLAB_TOKEN,
    REPO_ROOT,
    FakeGitLab,
    GitLabProject,
    gitlab_ci_local_bin,
    gitlab_job_results,
    gitlab_project_copy,
    run_gitlab_ci_local,
)

TEMPLATE = REPO_ROOT / "pipelines" / "gitlab" / "edgeci.gitlab-ci.yml"
COMPONENT = REPO_ROOT / "templates" / "edgeci.yml"  # a CI/CD component project keeps templates/ at its root
ROOT_CI = REPO_ROOT / ".gitlab-ci.yml"
STAGES = ["lint", "compose", "push", "stage", "boot-test", "promote"]


def _keys(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [str(k) for k in node] + [k for v in node.values() for k in _keys(v)]
    if isinstance(node, list):
        return [k for v in node for k in _keys(v)]
    return []


def _jobs(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    reserved = {"stages", "variables", "workflow", "include", "default", "spec"}
    return {k: v for k, v in doc.items() if k not in reserved and not k.startswith(".") and isinstance(v, dict)}


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return yaml.safe_load(TEMPLATE.read_text())


def test_template_stages_and_jobs(template: dict[str, Any]) -> None:
    assert template["stages"] == STAGES
    assert set(_jobs(template)) == {"edgeci-lint", "edgeci-plan", "edgeci-pipeline"}
    assert "changes" not in _keys(template)  # nothing here is started by `rules: changes`


def test_template_rules_pick_the_range_per_pipeline_kind(template: dict[str, Any]) -> None:
    rules = template[".edgeci-rules"]["rules"]
    # no duplicate pipeline for a pushed branch with an open MR, none for tags: in the jobs' own rules too
    assert rules[:2] == [
        {"if": '$CI_COMMIT_BRANCH && $CI_OPEN_MERGE_REQUESTS && $CI_PIPELINE_SOURCE == "push"', "when": "never"},
        {"if": "$CI_COMMIT_TAG", "when": "never"}]
    by_if = {r["if"]: r["variables"] for r in rules[2:]}
    assert by_if['$CI_PIPELINE_SOURCE == "schedule"'] == {"EDGECI_ALL": "true", "EDGECI_BASE": ""}
    assert by_if['$CI_PIPELINE_SOURCE == "merge_request_event"']["EDGECI_BASE"] == "$CI_MERGE_REQUEST_DIFF_BASE_SHA"
    assert by_if["$CI_COMMIT_BRANCH"]["EDGECI_BASE"] == "$CI_COMMIT_BEFORE_SHA"
    for name in ("edgeci-lint", "edgeci-plan"):
        assert template[name]["extends"] == ".edgeci"
    assert template[".edgeci"]["extends"] == ".edgeci-rules"
    assert template["edgeci-pipeline"]["extends"] == ".edgeci-rules"
    assert template[".edgeci"]["variables"]["GIT_DEPTH"] == "0"


def test_template_fans_out_through_a_generated_child_pipeline(template: dict[str, Any]) -> None:
    plan = "\n".join(template["edgeci-plan"]["script"])
    assert 'edgeci gitlab child-pipeline --base "${EDGECI_BASE:-}" > child.yml' in plan
    assert "edgeci gitlab child-pipeline --all > child.yml" in plan
    assert template["edgeci-plan"]["artifacts"]["paths"] == ["child.yml"]
    trigger = template["edgeci-pipeline"]["trigger"]
    # a schedule's variables reach the child jobs: GitLab forwards pipeline variables only when told to
    assert trigger == {"include": [{"artifact": "child.yml", "job": "edgeci-plan"}], "strategy": "depend",
                       "forward": {"yaml_variables": True, "pipeline_variables": True}}
    assert template["edgeci-pipeline"]["needs"] == ["edgeci-plan"]
    assert template["edgeci-pipeline"]["interruptible"] is True  # a newer push cancels it


def test_template_retries_infrastructure_failures_only_caches_pip_and_auto_cancels(
        template: dict[str, Any]) -> None:
    base = template[".edgeci"]
    assert base["retry"] == {"max": 2, "when": ["runner_system_failure", "stuck_or_timeout_failure",
                                                "api_failure"]}
    assert base["cache"]["paths"] == [".cache/pip"]
    assert base["variables"]["PIP_CACHE_DIR"] == "$CI_PROJECT_DIR/.cache/pip"
    assert template["workflow"]["auto_cancel"] == {"on_new_commit": "interruptible"}


def test_template_jobs_keep_records_and_reports_always(template: dict[str, Any]) -> None:
    lint = template["edgeci-lint"]["artifacts"]
    assert lint["when"] == "always"
    assert lint["paths"] == ["build/*/*/record.json", "reports/"]
    assert lint["reports"]["junit"] == "reports/lint-*.xml"
    assert template["edgeci-plan"]["artifacts"]["when"] == "always"


def test_root_pipeline_includes_the_template_and_adds_the_test_job() -> None:
    root = yaml.safe_load(ROOT_CI.read_text())
    assert root["include"] == [{"local": "pipelines/gitlab/edgeci.gitlab-ci.yml"}]
    assert root["test"]["script"] == ["make test"]
    assert root["test"]["rules"][0] == {"if": '$EDGECI_SKIP_PROJECT_TESTS == "true"', "when": "never"}
    assert root["variables"]["PYTHONPATH"] == "$CI_PROJECT_DIR"


def test_component_declares_its_inputs() -> None:
    spec, _ = yaml.safe_load_all(COMPONENT.read_text())
    inputs = spec["spec"]["inputs"]
    assert {"image", "python", "install", "lint_stage", "build_stage", "build_tags", "prod_runner_tag",
            "environment", "resource_group", "artifacts_expire_in"} <= set(inputs)
    # stages GitLab has without a `stages:` list, so including the component needs no change to the includer's
    assert inputs["lint_stage"]["default"] == inputs["build_stage"]["default"] == "build"
    assert inputs["prod_runner_tag"]["default"] == "ostree-prod"


# ---------------------------------------------------------------------------------------------
# gitlab-ci-local


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> GitLabProject:
    gitlab_ci_local_bin()
    return gitlab_project_copy(tmp_path_factory.mktemp("gcl") / "project")


def _preview(directory: Path, ci: str) -> dict[str, Any]:
    directory.mkdir(parents=True)
    shutil.copytree(REPO_ROOT / "pipelines" / "gitlab", directory / "pipelines" / "gitlab")
    shutil.copytree(REPO_ROOT / "templates", directory / "templates")
    (directory / ".gitlab-ci.yml").write_text(ci)
    subprocess.run(["git", "init", "-q", "-b", "main", str(directory)], check=True)
    subprocess.run(["git", "-C", str(directory), "add", "-A"], check=True)  # local includes must be in git
    r = subprocess.run([gitlab_ci_local_bin(), "--no-color", "--preview"], cwd=directory, capture_output=True,
                       text=True, timeout=120, check=False,
                       env={k: v for k, v in os.environ.items() if not k.startswith(("CI_", "GCL_"))})
    assert r.returncode == 0, r.stdout + r.stderr
    return dict(yaml.safe_load(r.stdout[r.stdout.index("---"):]))


def test_component_has_the_template_jobs_with_its_inputs_in_their_variables(tmp_path: Path) -> None:
    plain = _preview(tmp_path / "plain", "include:\n  - local: pipelines/gitlab/edgeci.gitlab-ci.yml\n")
    comp = _preview(tmp_path / "component", "include:\n  - local: templates/edgeci.yml\n")
    custom = _preview(tmp_path / "custom", "include:\n  - local: templates/edgeci.yml\n"
                                           "    inputs:\n      image: registry.example.com/edgeci:1\n"
                                           "      prod_runner_tag: prod-host\n      lint_stage: check\n"
                                           "stages: [check, build, deploy]\n")
    template_vars = yaml.safe_load(TEMPLATE.read_text())["variables"]
    assert set(_jobs(comp)) == set(_jobs(plain)) == {"edgeci-lint", "edgeci-plan", "edgeci-pipeline"}
    for name in ("edgeci-lint", "edgeci-plan"):
        assert comp[name].pop("image") == {"name": "$EDGECI_IMAGE"}  # the component alone names the image
        variables = comp[name].pop("variables")
        assert variables.pop("EDGECI_IMAGE") == ""
        # the template's global settings are the component's job variables (nothing global is added)
        assert variables == {**plain[name].pop("variables"), **{k: str(v) for k, v in template_vars.items()}}
    for name in _jobs(comp):
        assert comp[name].pop("stage") == "build"
        plain[name].pop("stage")
        assert comp[name] == plain[name], name
    assert comp["stages"] == [".pre", "build", "test", "deploy", ".post"]  # GitLab's defaults, untouched
    assert custom["edgeci-lint"]["variables"]["EDGECI_IMAGE"] == "registry.example.com/edgeci:1"
    assert custom["edgeci-plan"]["variables"]["EDGECI_PROMOTE_TAGS"] == "prod-host"
    assert custom["edgeci-lint"]["stage"] == custom["edgeci-plan"]["stage"] == "check"
    assert custom["edgeci-pipeline"]["stage"] == "build"
    assert custom["stages"] == [".pre", "check", "build", "deploy", ".post"]


def test_push_pipeline_lints_and_plans_only_the_changed_blueprint(project: GitLabProject) -> None:
    r = run_gitlab_ci_local(project.path, "edgeci-lint", "edgeci-plan",
                            variables={"CI_COMMIT_BEFORE_SHA": project.base})
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:]
    assert gitlab_job_results(out) == {"edgeci-lint": "PASS", "edgeci-plan": "PASS"}
    assert "edgeci-lint > lint: 2 blueprints, 0 errors" in out.replace("edgeci-lint  ", "edgeci-lint ")
    # lint's records and JUnit are the job's artifacts (gitlab-ci-local exports paths, not reports)
    exported = project.path / ".gitlab-ci-local" / "artifacts" / "edgeci-lint"
    assert (exported / "reports" / "lint-gateway-x86_64.xml").is_file()
    assert (exported / "build" / "gateway" / "x86_64" / "record.json").is_file()
    child = yaml.safe_load((project.path / "child.yml").read_text())
    jobs = {k for k, v in child.items() if isinstance(v, dict) and "script" in v}
    assert jobs == {f"{s}:gateway:x86_64" for s in ("compose", "push", "stage", "boot-test", "promote")}
    promote = child["promote:gateway:x86_64"]
    # manual and not blocking (issue 16: the pipeline ends green when the candidate is ready for approval)
    assert promote["rules"] == [{"when": "manual", "allow_failure": True}] and promote["allow_failure"] is True
    assert promote["environment"] == {"name": "production", "deployment_tier": "production"}
    assert promote["resource_group"] == "production" and promote["tags"] == ["ostree-prod"]
    assert "changes" not in _keys(child)
    for name in jobs:
        art = child[name]["artifacts"]
        assert art["when"] == "always" and art["reports"]["junit"]
        junit = art["reports"]["junit"]
        assert set(junit if isinstance(junit, list) else [junit]) <= set(art["paths"])
    # the generated pipeline passes gitlab-ci-local's schema validation
    listed = subprocess.run([gitlab_ci_local_bin(), "--no-color", "--file", "child.yml", "--list"],
                            cwd=project.path, capture_output=True, text=True, timeout=120, check=False)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert "boot-test:gateway:x86_64" in listed.stdout


def test_scheduled_pipeline_rebuilds_every_blueprint(project: GitLabProject) -> None:
    r = run_gitlab_ci_local(project.path, "edgeci-plan", variables={"CI_PIPELINE_SOURCE": "schedule"})
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:]
    child = yaml.safe_load((project.path / "child.yml").read_text())
    assert {"compose:gateway:x86_64", "compose:kiosk:x86_64", "promote:kiosk:x86_64"} <= set(child)
    assert child["variables"]["EDGECI_PIPELINE_MODE"] == "schedule"


def test_merge_request_pipeline_stops_after_boot_test_and_its_note_job_posts_once(
        project: GitLabProject, gitlab_server: FakeGitLab) -> None:
    mr = {"CI_PIPELINE_SOURCE": "merge_request_event", "CI_MERGE_REQUEST_DIFF_BASE_SHA": project.base,
          "CI_MERGE_REQUEST_IID": "7"}
    r = run_gitlab_ci_local(project.path, "edgeci-lint", "edgeci-plan", variables=mr)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:]
    assert gitlab_job_results(out) == {"edgeci-lint": "PASS", "edgeci-plan": "PASS"}
    child = yaml.safe_load((project.path / "child.yml").read_text())
    assert child["stages"] == ["compose", "push", "stage", "boot-test"]
    assert not any(k.startswith("promote:") for k in child)
    assert child["mr-note"]["variables"] == {"EDGECI_MR_IID": "7", "EDGECI_TARGETS": "gateway/x86_64"}
    assert child["mr-note"]["allow_failure"] is True  # a token or API error warns, never fails the candidate
    # the merge request's own image repository, tag and stage; its stage stops when the MR closes
    head = subprocess.run(["git", "-C", str(project.path), "rev-parse", "--short=8", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    assert child["variables"]["EDGECI_REGISTRY_IMAGE"] == "oci:build/oci/{blueprint}-review"
    assert child["variables"]["EDGECI_REGISTRY_TAGS"] == f"mr-7-{head}"
    assert child["variables"]["EDGECI_STAGE_DIR"] == "build/stage/{blueprint}-mr-7"
    env = child["stage:gateway:x86_64"]["environment"]
    assert env["name"] == "review/mr-7/gateway-x86_64" and env["on_stop"] == "stage-stop:gateway:x86_64"
    assert child["stage-stop:gateway:x86_64"]["environment"] == {"name": env["name"], "action": "stop"}
    # the generated note job, as GitLab runs it at the end of the child pipeline, against the fake GitLab
    api = {"CI_SERVER_URL": gitlab_server.url, "CI_PROJECT_ID": "42", "EDGECI_GITLAB_TOKEN": GITLAB_TOKEN,
           "PYTHONPATH": str(project.path), "CI_PIPELINE_URL": f"{gitlab_server.url}/platform/edge/-/pipelines/5"}
    for attempt in (1, 2):
        r = run_gitlab_ci_local(project.path, "--file", "child.yml", "mr-note", variables=api)
        out = r.stdout + r.stderr
        assert r.returncode == 0, out[-6000:]
        assert gitlab_job_results(out) == {"mr-note": "PASS"}, out[-6000:]
        assert GITLAB_TOKEN not in out
        if attempt == 1:
            assert [(w.method, w.path) for w in gitlab_server.writes()] == [
                ("POST", "/projects/42/merge_requests/7/notes")]
            gitlab_server.clear_log()
    assert gitlab_server.writes() == []  # the re-run found its note and had nothing to change
    (note,) = gitlab_server.notes[7]
    assert note["body"].startswith(MR_NOTE_MARKER)
    assert f"| gateway | x86_64 | {project.gateway_version} |" in note["body"]
    assert (project.path / "reports" / "mr-summary.md").read_text() == note["body"]


@pytest.mark.parametrize("mode", ["merge_request", "branch", "default_branch", "schedule"])
def test_generated_child_pipelines_and_the_template_pass_gitlabs_schema(tmp_path: Path, mode: str) -> None:
    from edgeci.ci.gitlab_setup import ChildOptions, Mode, Target, child_pipeline, render_yaml

    checker = shutil.which("check-jsonschema")
    assert checker, "check-jsonschema is not installed: pip install -e '.[test]'"
    opts = ChildOptions(mode=Mode(mode), install="edgeci[gitlab]", mr_iid="7", commit_sha="0a1b2c3d",
                        ref_slug="feature", parent_pipeline_id="9", forward={"EDGECI_NOTIFY": "ops"})
    child = tmp_path / "child.yml"
    child.write_text(render_yaml(child_pipeline([Target("gateway", "x86_64"), Target("kiosk", "x86_64")], opts)))
    files = [child] + ([TEMPLATE, ROOT_CI] if mode == "schedule" else [])
    r = subprocess.run([checker, "--builtin-schema", "vendor.gitlab-ci", *map(str, files)], capture_output=True,
                       text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    # and the schema does reject what GitLab rejects: a retry condition GitLab does not know
    bad = yaml.safe_load(child.read_text())
    bad[next(k for k in bad if k.startswith("compose:"))]["retry"]["when"] = ["runner_on_fire"]
    child.write_text(yaml.safe_dump(bad))
    r = subprocess.run([checker, "--builtin-schema", "vendor.gitlab-ci", str(child)], capture_output=True,
                       text=True, timeout=120, check=False)
    assert r.returncode == 1
