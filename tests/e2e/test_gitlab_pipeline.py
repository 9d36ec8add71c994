"""This repository's .gitlab-ci.yml, run for real by gitlab-ci-local on a git copy of the project.

The signing keys are real Ed25519 role keys, given to the pipeline the way GitLab gives them: File
variables scoped to the environment of the one job that signs (.gitlab-ci-local-variables.yml, which
gitlab-ci-local reads for parent and child pipelines alike, with GitLab's environment scopes). The
production host's trust policy is a file named by EDGECI_TRUST_POLICY, scoped to production.

- A push to the default branch that bumps gateway's version: lint → plan → the child pipeline (compose,
  push, stage, boot-test for gateway/x86_64 only, with the embedded default). The pipeline ends green
  with the candidate waiting for approval; production stays empty. A person approves the boot-tested
  checksum with their approver key; the manual promote job runs on its own (`--manual`, as GitLab runs
  it when someone plays it), verifies the statements the compose and boot-test jobs signed, and lands
  the commit.
- A merge request: the candidate is pushed to the review image with the MR's own tag, staged in the
  MR's own stage, nothing is promoted; the environment's stop job (what GitLab runs when the MR closes)
  stops that stage. The note job has no token here: it warns, the pipeline passes.
- A schedule: every blueprint rebuilt, both kinds (the ostree blueprints and the image-mode gateway-bootc, pushed
  to a real docker-registry, the image signed with the key scoped to its push job), and a schedule variable (the
  boot-test backend) reaches the child jobs.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from edgeci.evidence import SigningKey, write_key_pair
from edgeci.tools import ostree
from tests.fixtures.gitlab_server import (
    GitLabProject,
    gitlab_ci_local_bin,
    gitlab_job_results,
    gitlab_project_copy,
    run_gitlab_ci_local,
)
from tests.fixtures.promote import GpgKeys
from tests.fixtures.registry import start_registry

pytestmark = pytest.mark.slow

# The stage commands this pipeline runs; while one is missing the test cannot pass yet.
NEEDED = ("lint", "changed", "compose", "push", "stage", "boot-test", "approve", "gate", "promote", "gitlab")
TARGET = "gateway:x86_64"
BUILD_JOBS = [f"{s}:{TARGET}" for s in ("compose", "push", "stage", "boot-test")]
PARENT_JOBS = ["edgeci-lint", "edgeci-plan", "edgeci-pipeline"]


def _edgeci(project: Path, *args: str, env: dict[str, str] | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
    run_env = {k: v for k, v in os.environ.items() if not k.startswith("EDGECI_") or k == "EDGECI_COMPOSER_OS"}
    run_env["PYTHONPATH"] = str(project)  # the copy's code, as the pipeline runs it
    run_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "edgeci", *args], cwd=project, env=run_env, capture_output=True,
                          text=True, timeout=timeout, check=False)


def _missing_commands() -> list[str]:
    r = subprocess.run([sys.executable, "-m", "edgeci", "--help"], capture_output=True, text=True, check=False)
    listed = r.stdout + r.stderr
    return [c for c in NEEDED if f"    {c} " not in listed and f"    {c}\n" not in listed]


class Keys:
    """compose, boot-test and approver key pairs under DIR."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        for role in ("compose", "boot-test", "approver"):
            write_key_pair(SigningKey.generate(role, name=f"ci-{role}"), directory)

    def private(self, role: str) -> Path:
        return self.dir / f"{role}.key"

    def public(self, role: str) -> Path:
        return self.dir / f"{role}.pub"


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return Keys(tmp_path / "keys")


@pytest.fixture
def project(tmp_path: Path, keys: Keys) -> Iterator[GitLabProject]:
    missing = _missing_commands()
    if missing:
        pytest.skip(f"edgeci has no {', '.join(missing)} command yet (`edgeci --help`): the pipeline needs them")
    gitlab_ci_local_bin()
    proj = gitlab_project_copy(tmp_path / "project")
    policy = tmp_path / "trust" / "trust.yaml"
    # Settings > CI/CD > Variables, as pipelines/gitlab/README.md says: File variables holding the private keys,
    # each scoped to the environment of the one job that signs; the trust policy's path for production only.
    variables = {
        "EDGECI_COMPOSE_KEY": {"type": "file", "values": {"edgeci/compose": keys.private("compose").read_text()}},
        "EDGECI_BOOT_TEST_KEY": {"type": "file",
                                 "values": {"edgeci/boot-test": keys.private("boot-test").read_text()}},
        "EDGECI_TRUST_POLICY": {"type": "variable", "values": {"production": str(policy)}},
    }
    (proj.path / ".gitlab-ci-local-variables.yml").write_text(yaml.safe_dump(variables))
    try:
        yield proj
    finally:
        # every stage server the pipeline's jobs left running (each blueprint's, the MR's), stopped by the PID it
        # recorded in its stage directory
        from edgeci.reposerver import stop_server

        for stage_dir in sorted((proj.path / "build" / "stage").glob("*")):
            if stage_dir.is_dir():
                stop_server(stage_dir)


def _record(project: Path, bp: str = "gateway") -> dict:
    return json.loads((project / "build" / bp / "x86_64" / "record.json").read_text())["sections"]


def _envelopes(project: Path) -> list[dict]:
    return json.loads((project / "build" / "gateway" / "x86_64" / "evidence.json").read_text())["envelopes"]


def _write_policy(path: Path, keys: Keys, backend: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({
        "schema": 1,
        "keys": {"compose": [{"name": "ci-compose", "file": str(keys.public("compose"))}],
                 "boot-test": [{"name": "ci-boot-test", "file": str(keys.public("boot-test"))}],
                 "approver": [{"name": "alice", "approver": "alice", "file": str(keys.public("approver"))}]},
        "approvals_required": 1,
        "allowed_approvers": ["alice"],
        "required_scenarios": ["install", "upgrade", "rollback"],
        "accepted_backends": [backend],
        "require_signed_production": False,
    }))


def test_push_pipeline_ends_green_ready_for_approval_then_the_promote_job_verifies_the_signed_chain(
        project: GitLabProject, keys: Keys, tmp_path: Path) -> None:
    # 1. the push: everything up to the manual promote job, and the pipeline ends successfully
    r = run_gitlab_ci_local(project.path, variables={"CI_COMMIT_BEFORE_SHA": project.base})
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-8000:]
    results = gitlab_job_results(out)
    assert "FAIL" not in results.values(), out[-8000:]  # gitlab-ci-local does not fail the parent for a child
    assert {job: results.get(job) for job in [*PARENT_JOBS, *BUILD_JOBS]} == {
        job: "PASS" for job in [*PARENT_JOBS, *BUILD_JOBS]}
    assert f"promote:{TARGET}" not in results  # manual, not blocking: it waits for someone
    assert not any("kiosk" in job for job in results)  # unchanged blueprint, not built
    assert "test" not in results
    child = yaml.safe_load((project.path / "child.yml").read_text())
    assert child[f"promote:{TARGET}"]["rules"] == [{"when": "manual", "allow_failure": True}]
    sections = _record(project.path)
    for name in ("blueprint", "lint", "compose", "push", "stage", "boot_test"):
        assert sections[name]["status"] == "passed", name
    assert "gate" not in sections and "promote" not in sections
    assert sections["blueprint"]["version"] == project.gateway_version
    assert sections["push"]["tags"][:2] == [project.gateway_version, "latest"]  # the default branch: release tags
    commit, ref = sections["compose"]["commit"], sections["compose"]["ref"]
    prod = project.path / "build" / "prod" / "repo"
    assert not (prod / "refs" / "heads" / ref).exists()
    for stage in ("lint", "compose", "push", "stage", "boot-test"):
        assert (project.path / "reports" / f"{stage}-gateway-x86_64.xml").is_file(), stage
    # the compose and boot-test jobs each signed with the key scoped to their environment
    assert len(_envelopes(project.path)) == 2

    # 2. a person approves the exact checksum that passed the boot test, with their approver key
    approved = _edgeci(project.path, "approve", "gateway", "--as", "alice",
                       env={"EDGECI_APPROVER_KEY": str(keys.private("approver"))})
    assert approved.returncode == 0, approved.stdout + approved.stderr
    assert len(_envelopes(project.path)) == 3

    # 3. the production host's trust policy, then the manual promote job, run on its own
    _write_policy(tmp_path / "trust" / "trust.yaml", keys, sections["boot_test"]["backend"])
    r = run_gitlab_ci_local(project.path, "--file", "child.yml", "--manual", f"promote:{TARGET}",
                            f"promote:{TARGET}", variables={"PYTHONPATH": str(project.path)})
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-8000:]
    assert gitlab_job_results(out) == {f"promote:{TARGET}": "PASS"}, out[-8000:]
    # it verified the statements the earlier jobs signed, against the policy EDGECI_TRUST_POLICY names
    assert "evidence passed compose-provenance" in out, out[-8000:]
    assert "evidence passed boot-test" in out, out[-8000:]
    sections = _record(project.path)
    assert sections["gate"]["decision"] == "approved"
    assert sections["promote"]["status"] == "passed"
    assert sections["promote"]["checksum"] == commit
    assert ostree.rev_parse(prod, ref) == commit
    for stage in ("gate", "promote"):
        assert (project.path / "reports" / f"{stage}-gateway-x86_64.xml").is_file(), stage


def _serves(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/config", timeout=5):
            return True
    except (urllib.error.URLError, OSError):
        return False


def test_merge_request_candidate_has_its_own_tag_and_stage_and_the_stop_job_tears_the_stage_down(
        project: GitLabProject) -> None:
    mr = {"CI_PIPELINE_SOURCE": "merge_request_event", "CI_MERGE_REQUEST_DIFF_BASE_SHA": project.base,
          "CI_MERGE_REQUEST_IID": "7"}
    r = run_gitlab_ci_local(project.path, variables=mr)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-8000:]
    results = gitlab_job_results(out)
    assert {job: results.get(job) for job in [*PARENT_JOBS, *BUILD_JOBS]} == {
        job: "PASS" for job in [*PARENT_JOBS, *BUILD_JOBS]}, out[-8000:]
    # no token here: the note job fails as a warning (allow_failure), never failing the candidate's pipeline
    assert results.get("mr-note") != "FAIL" and re.search(r"-> mr-note\s+finished in [^\n]*WARN", out), out[-3000:]
    assert not any(job.startswith(("promote:", "stage-stop:")) for job in results)  # stop: manual, on close
    sections = _record(project.path)
    sha = subprocess.run(["git", "-C", str(project.path), "rev-parse", "--short=8", "HEAD"], capture_output=True,
                         text=True, check=True).stdout.strip()
    assert sections["push"]["tags"] == [f"mr-7-{sha}"]  # its own tag only: no version, no latest
    assert sections["push"]["destination"].endswith("gateway-review")
    assert not (project.path / "build" / "oci" / "gateway").exists()  # the release image was not touched
    assert (project.path / "build" / "stage" / "gateway-mr-7").is_dir()
    assert not (project.path / "build" / "stage" / "gateway").exists()  # nor the default branch's stage
    url = sections["stage"]["url"]
    assert _serves(url), url

    # the merge request closes: GitLab runs the environment's on_stop job
    r = run_gitlab_ci_local(project.path, "--file", "child.yml", "--manual", f"stage-stop:{TARGET}",
                            f"stage-stop:{TARGET}", variables={"PYTHONPATH": str(project.path)})
    out = r.stdout + r.stderr
    assert gitlab_job_results(out) == {f"stage-stop:{TARGET}": "PASS"}, out[-8000:]
    assert not _serves(url)


def test_schedule_rebuilds_every_blueprint_of_both_kinds_and_its_variables_reach_the_child_jobs(
        project: GitLabProject, tmp_path: Path, promote_gpg: GpgKeys) -> None:
    """Every blueprint: gateway and kiosk (ostree) and gateway-bootc (image mode) run the same jobs. The image's push
    job alone gets EDGECI_IMAGE_SIGNING_KEY (a File variable scoped to edgeci/image-signing, as GitLab gives it);
    the runner has no keyring, the fingerprint in edgeci.yaml decides which key signs."""
    reg = start_registry(tmp_path / "registry")
    try:
        (project.path / "edgeci.yaml").write_text(
            f"registry:\n  image: docker://{reg.host}/edge/{{blueprint}}\n  tls_verify: false\n"
            f"image_mode:\n  gpg_key: {promote_gpg.key}\n  gpg_public_key: {promote_gpg.public}\n")
        subprocess.run(["git", "-C", str(project.path), "-c", "user.name=ci", "-c", "user.email=ci@example.com",
                        "add", "edgeci.yaml"], check=True, capture_output=True)
        subprocess.run(["git", "-C", str(project.path), "-c", "user.name=ci", "-c", "user.email=ci@example.com",
                        "commit", "-qm", "registry and image signing"], check=True, capture_output=True)
        secret = subprocess.run(["gpg", "--batch", f"--homedir={promote_gpg.home}", "--armor", "--export-secret-keys",
                                 promote_gpg.key], check=True, capture_output=True, text=True).stdout
        variables_file = project.path / ".gitlab-ci-local-variables.yml"
        variables = yaml.safe_load(variables_file.read_text())
        variables["EDGECI_IMAGE_SIGNING_KEY"] = {"type": "file", "values": {"edgeci/image-signing": secret}}
        for name, value in reg.env.items():  # masked project variables in GitLab
            variables[name] = {"type": "variable", "values": {"*": value}}
        variables_file.write_text(yaml.safe_dump(variables))
        schedule = {"CI_PIPELINE_SOURCE": "schedule", "EDGECI_FORWARD_VARIABLES": "EDGECI_BOOT_TEST_BACKEND",
                    "EDGECI_BOOT_TEST_BACKEND": "sysroot"}
        r = run_gitlab_ci_local(project.path, variables=schedule)
    finally:
        if reg.process is not None:
            reg.process.stop()
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-8000:]
    results = gitlab_job_results(out)
    blueprints = ("gateway", "kiosk", "gateway-bootc")
    built = [f"{s}:{bp}:x86_64" for bp in blueprints for s in ("compose", "push", "stage", "boot-test")]
    assert {job: results.get(job) for job in [*PARENT_JOBS, *built]} == {
        job: "PASS" for job in [*PARENT_JOBS, *built]}, out[-8000:]
    assert "FAIL" not in results.values(), out[-8000:]
    for bp in blueprints:
        # gitlab-ci-local hands the command line's variables to the parent only: the child saw the schedule's
        # variable because the pipeline forwarded it
        assert _record(project.path, bp)["boot_test"]["backend"] == "sysroot", bp
    image = _record(project.path, "gateway-bootc")
    assert image["compose"]["kind"] == "image" and image["push"]["signed"] == "gpg"
    assert image["push"]["image_ref"].startswith(f"docker://{reg.host}/edge/gateway-bootc@sha256:")
    assert image["boot_test"]["status"] == "passed" and "stand-in for bootc" in image["boot_test"]["device"]
    assert "PRIVATE KEY" not in out and secret.splitlines()[2] not in out  # the key never reaches a log
