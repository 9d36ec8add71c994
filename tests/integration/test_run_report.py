"""`edgeci run` end to end on the embedded default, `--resume` after an approval, and the HTML report
(rendered by headless Chromium: a screenshot is taken and the DOM is checked)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeci.tools import ostree
from tests.fixtures.composed import composed_blueprints_dir, edgeci_cli
from tests.fixtures.promote import alive as _alive

pytestmark = pytest.mark.slow

AUTHOR = {"GIT_AUTHOR_NAME": "Dana Developer", "GIT_AUTHOR_EMAIL": "dana@example.com",
          "GIT_COMMITTER_NAME": "Dana Developer", "GIT_COMMITTER_EMAIL": "dana@example.com"}
# sysroot keeps these tests fast; the qemu backend is proven in test_boottest_qemu.py and by the GitLab e2e run
FAST = ["--set", "boot_test.backend=sysroot"]


def _git(project: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(project), *args], check=True, capture_output=True,
                   env={**os.environ, **AUTHOR})


def _record(project: Path) -> dict:
    return json.loads((project / "build/gateway/x86_64/record.json").read_text())["sections"]


@pytest.fixture(scope="module")
def released(tmp_path_factory: pytest.TempPathFactory, kernel_cache) -> Iterator[dict]:  # type: ignore[no-untyped-def]
    """Two releases through `edgeci run`: 1.0.0, then 1.0.1 with a changed file; outputs kept.

    Tests may leave a candidate at the gate (its stage server running): teardown stops it by PID."""
    project = tmp_path_factory.mktemp("run-project")
    (project / "blueprints").mkdir()
    for name in ("gateway.toml", "gateway.checks.yaml"):
        shutil.copy(composed_blueprints_dir() / name, project / "blueprints" / name)
    _git(project, "init", "-q", "-b", "main")
    _git(project, "add", "-A")
    _git(project, "commit", "-qm", "gateway 1.0.0")
    out: dict = {"project": project}
    first = edgeci_cli([*FAST, "run", "gateway"], cwd=project)
    out["first_stop"] = first
    out["first_record"] = _record(project)
    out["prod_before_approval"] = ostree.rev_parse(project / "build/prod/repo", first_ref(project)) \
        if (project / "build/prod/repo/config").exists() else None
    assert edgeci_cli(["approve", "gateway", "--as", "alex"], cwd=project).returncode == 0
    out["first_resume"] = edgeci_cli([*FAST, "run", "gateway", "--resume"], cwd=project)
    out["first_commit"] = _record(project)["compose"]["commit"]
    toml = project / "blueprints" / "gateway.toml"
    toml.write_text(toml.read_text().replace('version = "1.0.0"', 'version = "1.0.1"')
                    + '\n[[customizations.files]]\npath = "/etc/motd"\ndata = "gateway 1.0.1\\n"\n')
    _git(project, "commit", "-qam", "gateway 1.0.1")
    out["second_stop"] = edgeci_cli([*FAST, "run", "gateway"], cwd=project)
    assert edgeci_cli(["approve", "gateway", "--as", "alex"], cwd=project).returncode == 0
    out["second_resume"] = edgeci_cli([*FAST, "run", "gateway", "--resume"], cwd=project)
    out["record"] = _record(project)
    out["report"] = edgeci_cli(["report", "gateway"], cwd=project)
    try:
        yield out
    finally:
        edgeci_cli(["stage", "stop", "gateway"], cwd=project)


def first_ref(project: Path) -> str:
    return str(_record(project)["compose"]["ref"])


def test_run_stops_at_the_gate_and_says_how_to_approve(released: dict) -> None:
    r = released["first_stop"]
    assert r.returncode == 1, r.stdout + r.stderr
    assert "edgeci approve gateway --arch x86_64 --as NAME" in r.stdout
    assert "edgeci --set boot_test.backend=sysroot run gateway --arch x86_64 --resume" in r.stdout
    for stage in ("lint", "compose", "push", "stage", "boot-test", "gate"):
        assert f"<== {stage} gateway/x86_64:" in r.stdout
    assert "==> promote" not in r.stdout
    assert released["prod_before_approval"] is None  # nothing reached production before the approval
    assert released["first_record"]["gate"]["decision"] == "pending"


def test_resume_promotes_the_tested_commit_and_stops_the_stage_server(released: dict) -> None:
    r = released["first_resume"]
    assert r.returncode == 0, r.stdout + r.stderr
    assert "==> lint" not in r.stdout and "==> boot-test" not in r.stdout  # resumed at the gate
    assert "<== promote gateway/x86_64: passed" in r.stdout
    rec = released["record"]
    project = released["project"]
    prod = project / "build/prod/repo"
    assert ostree.rev_parse(prod, rec["compose"]["ref"]) == rec["compose"]["commit"] == rec["promote"]["checksum"]
    assert rec["promote"]["previous"] == released["first_commit"]
    assert not _alive(int(rec["stage"]["pid"]))


def test_second_release_builds_on_production_and_ships_a_delta(released: dict) -> None:
    assert released["second_stop"].returncode == 1
    assert released["second_resume"].returncode == 0, released["second_resume"].stderr
    rec = released["record"]
    assert rec["compose"]["parent"] == released["first_commit"]
    assert rec["blueprint"]["version"] == "1.0.1"
    assert rec["boot_test"]["scenarios"]["upgrade"]["outcome"] == "passed"
    assert any(d.startswith(released["first_commit"][:2]) or "-" in d for d in rec["promote"]["deltas"])
    history = edgeci_cli(["history", "gateway"], cwd=released["project"])
    assert history.returncode == 0
    assert "1.0.0" in history.stdout and "1.0.1" in history.stdout


def test_resume_after_promotion_changes_nothing(released: dict) -> None:
    project = released["project"]
    prod = project / "build/prod/repo"
    before = (prod / "releases.json").read_text()
    r = edgeci_cli([*FAST, "run", "gateway", "--resume"], cwd=project)
    assert r.returncode == 0
    assert "already promoted" in r.stdout
    assert (prod / "releases.json").read_text() == before


def test_run_of_an_unknown_blueprint_is_one_clear_line(tmp_path: Path) -> None:
    (tmp_path / "blueprints").mkdir()
    shutil.copy(composed_blueprints_dir() / "gateway.toml", tmp_path / "blueprints" / "gateway.toml")
    r = edgeci_cli(["run", "nosuch"], cwd=tmp_path)
    assert r.returncode == 2
    errors = [line for line in r.stderr.splitlines() if line.startswith("edgeci: error:")]
    assert len(errors) == 1 and "nosuch" in errors[0], r.stderr


def test_report_opens_in_chromium_with_history_timeline_and_delta(released: dict, tmp_path: Path) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("chromium is not installed: `make test` installs it (apt-get install chromium)")
    r = released["report"]
    assert r.returncode == 0, r.stderr
    project = released["project"]
    html_path = project / "reports" / "report-gateway-x86_64.html"
    data = json.loads((project / "reports" / "report-gateway-x86_64.json").read_text())
    assert [x["version"] for x in data["releases"]] == ["1.0.1", "1.0.0"]
    assert "etc/motd" in " ".join(data["files"].get("added", []) + data["files"].get("modified", []))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    shot = tmp_path / "report.png"
    subprocess.run([chromium, *flags, f"--screenshot={shot}", "--window-size=1200,2400", html_path.as_uri()],
                   check=True, capture_output=True, timeout=120)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    dom = subprocess.run([chromium, *flags, "--dump-dom", html_path.as_uri()], check=True, capture_output=True,
                         text=True, timeout=120).stdout
    assert 'id="candidate-version">1.0.1<' in dom
    assert "Production release history" in dom and "1.0.0" in dom
    for stage in ("compose", "boot-test", "promote"):
        assert f"<td>{stage}</td>" in dom
    assert "<svg" in dom and "delta" in dom
    assert "approved" in dom and "alex" in dom
    assert "<script" not in dom.lower()


def test_monthly_rebuild_of_an_unchanged_blueprint_ships_as_the_next_patch(released: dict) -> None:
    """Runs last: it leaves a third candidate (1.0.2) waiting at the gate."""
    project = released["project"]
    prod_commit = released["record"]["promote"]["checksum"]
    plain = edgeci_cli([*FAST, "run", "gateway"], cwd=project)
    assert plain.returncode == 1
    assert "production-version" in plain.stdout and "==> compose" not in plain.stdout  # 1.0.1 is already out
    r = edgeci_cli([*FAST, "run", "gateway", "--rebuild"], cwd=project)
    assert r.returncode == 1, r.stdout + r.stderr  # at the gate, as every candidate
    assert "composing as 1.0.2" in r.stdout
    rec = _record(project)
    assert rec["blueprint"]["version"] == "1.0.2" and rec["blueprint"]["rebuild_of"] == "1.0.1"
    assert rec["compose"]["parent"] == prod_commit
    assert ostree.metadata(project / "build/stage/gateway/usr/share/nginx/html/repo", rec["compose"]["commit"],
                           "version") == "1.0.2"
    assert "1.0.2 > production's 1.0.1" in " ".join(x["reason"] for x in rec["gate"]["rules"])
    # git is untouched: the blueprint still says 1.0.1
    assert 'version = "1.0.1"' in (project / "blueprints/gateway.toml").read_text()
    stage_pid = int(rec["stage"]["pid"])
    assert edgeci_cli(["stage", "stop", "gateway"], cwd=project).returncode == 0
    assert not _alive(stage_pid)
