"""A stage that fails because of the candidate (exit 1) invalidates its record section and every later one, so
`run --resume` never carries an earlier attempt's passed sections past the failure; an infrastructure error
(exit 2) records nothing, and a retry resumes where it stopped (compose, lint and promote record their own)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from edgeci.cli import main
from edgeci.commands.pipeline import STAGES, _first_pending
from edgeci.record import BuildRecord, record_path
from tests.fixtures.httpserver import serve_directory

REF = "rhel/9/x86_64/edge"


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    return port


def _record(tmp_path: Path) -> BuildRecord:
    (tmp_path / "blueprints").mkdir()
    (tmp_path / "blueprints" / "edge.toml").write_text('name = "edge"\nversion = "1.0.1"\n')
    rec = BuildRecord(record_path(tmp_path / "build", "edge", "x86_64"))
    rec.set("blueprint", {"name": "edge", "version": "1.0.1", "path": "blueprints/edge.toml"})
    rec.set("lint", {"findings": []})
    rec.set("compose", {"commit": "c" * 64, "ref": REF, "type": "edge-commit"})
    rec.set("push", {"digest": "sha256:" + "d" * 64})
    rec.set("stage", {"url": "http://127.0.0.1:1/repo", "commit": "c" * 64})  # an earlier, passed stage
    rec.set("boot_test", {"backend": "qemu", "scenarios": {}})
    rec.save()
    return rec


def test_a_stage_that_serves_another_commit_invalidates_stage_and_everything_after(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    rec = _record(tmp_path)
    served = tmp_path / "stage-host" / "repo" / "refs" / "heads" / REF
    served.parent.mkdir(parents=True)
    served.write_text("e" * 64 + "\n")  # the stage host runs another candidate's image
    with serve_directory(tmp_path / "stage-host") as url:
        assert main(["stage", "wait", "edge", "--url", f"{url}/repo", "--deadline", "0"]) == 1
    assert "expected " + "c" * 64 in capsys.readouterr().err
    after = BuildRecord.load(rec.path).sections
    assert after["stage"]["status"] == "failed" and "e" * 12 in after["stage"]["error"]
    assert "boot_test" not in after
    assert STAGES[_first_pending(BuildRecord.load(rec.path))][0] == "stage"  # resuming starts at the stage


def test_an_infrastructure_error_records_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    rec = _record(tmp_path)
    before = rec.path.read_bytes()
    url = f"http://127.0.0.1:{_closed_port()}/repo"
    assert main(["stage", "wait", "edge", "--url", url, "--deadline", "0"]) == 2
    assert "unreachable" in capsys.readouterr().err
    assert rec.path.read_bytes() == before


def test_an_error_before_any_record_writes_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "blueprints").mkdir()
    (tmp_path / "blueprints" / "edge.toml").write_text('name = "edge"\nversion = "1.0.1"\n')
    assert main(["push", "edge"]) == 2  # no record yet: nothing to invalidate, nothing written
    assert not record_path(tmp_path / "build", "edge", "x86_64").exists()
