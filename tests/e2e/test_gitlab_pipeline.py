"""This repository's .gitlab-ci.yml, run for real by gitlab-ci-local on a git copy of the project.

A push to the default branch that bumps gateway's version: lint → plan → the child pipeline (compose,
push, stage, boot-test for gateway/x86_64 only, with the embedded default: local composer, OCI
directory, edgeci's stage server, qemu or sysroot boot test, local approvals). It stops before the
manual promote job and production stays empty. Then a person approves the boot-tested checksum and the
manual promote job of the generated child pipeline runs (`--manual promote:gateway:x86_64`), as GitLab
runs it when someone plays it: the gate passes and the commit lands in build/prod/repo.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeci.tools import ostree
from tests.fixtures.gitlab_server import (
    GitLabProject,
    gitlab_ci_local_bin,
    gitlab_job_results,
    gitlab_project_copy,
    run_gitlab_ci_local,
)

pytestmark = pytest.mark.slow

# The stage commands this pipeline runs; while one is missing the test cannot pass yet.
NEEDED = ("lint", "changed", "compose", "push", "stage", "boot-test", "approve", "gate", "promote", "gitlab")
TARGET = "gateway:x86_64"
BUILD_JOBS = [f"{s}:{TARGET}" for s in ("compose", "push", "stage", "boot-test")]


def _edgeci(project: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGECI_")}
    env["PYTHONPATH"] = str(project)  # the copy's code, as the pipeline runs it
    return subprocess.run([sys.executable, "-m", "edgeci", *args], cwd=project, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


def _missing_commands() -> list[str]:
    r = subprocess.run([sys.executable, "-m", "edgeci", "--help"], capture_output=True, text=True, check=False)
    listed = r.stdout + r.stderr
    return [c for c in NEEDED if f"    {c} " not in listed and f"    {c}\n" not in listed]


@pytest.fixture
def project(tmp_path: Path) -> Iterator[GitLabProject]:
    missing = _missing_commands()
    if missing:
        pytest.skip(f"edgeci has no {', '.join(missing)} command yet (`edgeci --help`): the pipeline needs them")
    gitlab_ci_local_bin()
    proj = gitlab_project_copy(tmp_path / "project")
    try:
        yield proj
    finally:
        # the pipeline's stage server, if a failure left it running (stopped by the PID it recorded)
        _edgeci(proj.path, "stage", "stop", "gateway", "--arch", "x86_64")


def _record(project: Path) -> dict:
    return json.loads((project / "build" / "gateway" / "x86_64" / "record.json").read_text())["sections"]


def test_push_pipeline_stops_at_the_gate_then_the_manual_promote_lands_the_commit(project: GitLabProject) -> None:
    # 1. the push: everything up to the manual promote job
    r = run_gitlab_ci_local(project.path, variables={"CI_COMMIT_BEFORE_SHA": project.base})
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-8000:]
    results = gitlab_job_results(out)
    assert "FAIL" not in results.values(), out[-8000:]  # gitlab-ci-local does not fail the parent for a child
    assert {job: results.get(job) for job in ["edgeci-lint", "edgeci-plan", "edgeci-pipeline", *BUILD_JOBS]} == {
        job: "PASS" for job in ["edgeci-lint", "edgeci-plan", "edgeci-pipeline", *BUILD_JOBS]}
    assert f"promote:{TARGET}" not in results  # manual: it waits for someone
    assert not any("kiosk" in job for job in results)  # unchanged blueprint, not built
    assert "test" not in results
    sections = _record(project.path)
    for name in ("blueprint", "lint", "compose", "push", "stage", "boot_test"):
        assert sections[name]["status"] == "passed", name
    assert "gate" not in sections and "promote" not in sections
    assert sections["blueprint"]["version"] == project.gateway_version
    commit, ref = sections["compose"]["commit"], sections["compose"]["ref"]
    prod = project.path / "build" / "prod" / "repo"
    assert not (prod / "refs" / "heads" / ref).exists()
    for stage in ("lint", "compose", "push", "stage", "boot-test"):
        assert (project.path / "reports" / f"{stage}-gateway-x86_64.xml").is_file(), stage

    # 2. a person approves the exact checksum that passed the boot test
    approved = _edgeci(project.path, "approve", "gateway", "--as", "alice")
    assert approved.returncode == 0, approved.stdout + approved.stderr

    # 3. the manual promote job of the generated child pipeline
    r = run_gitlab_ci_local(project.path, "--file", "child.yml", "--manual", f"promote:{TARGET}",
                            f"promote:{TARGET}", variables={"PYTHONPATH": str(project.path)})
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-8000:]
    assert gitlab_job_results(out) == {f"promote:{TARGET}": "PASS"}, out[-8000:]
    sections = _record(project.path)
    assert sections["gate"]["decision"] == "approved"
    assert sections["promote"]["status"] == "passed"
    assert sections["promote"]["checksum"] == commit
    assert ostree.rev_parse(prod, ref) == commit
    for stage in ("gate", "promote"):
        assert (project.path / "reports" / f"{stage}-gateway-x86_64.xml").is_file(), stage
