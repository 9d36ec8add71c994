"""BuildRecord: atomic JSON, sections in pipeline order, refusal naming the missing or failed stage."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from edgeci.errors import RecordError
from edgeci.record import FAILED, SCHEMA_VERSION, SECTIONS, BuildRecord, atomic_write_text, record_path
from edgeci.tools.run import register_secret


def test_record_path_layout(tmp_path: Path) -> None:
    assert record_path(tmp_path, "gw", "x86_64") == tmp_path / "gw" / "x86_64" / "record.json"


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    p = record_path(tmp_path, "gw", "x86_64")
    rec = BuildRecord(p)
    rec.set("blueprint", {"name": "gw", "version": "1.0.0", "path": "blueprints/gw.toml", "git_sha": "",
                          "sha256": "ab" * 32})
    rec.set("lint", {"findings": []})
    rec.save()
    data = json.loads(p.read_text())
    assert data["schema"] == SCHEMA_VERSION and "updated" in data
    again = BuildRecord.load(p)
    assert again.blueprint == "gw"
    sec = again.section("lint")
    assert sec["status"] == "passed" and sec["findings"] == [] and sec["time"].endswith("Z")
    assert [x.name for x in p.parent.iterdir()] == ["record.json"]  # no temp files left behind


def test_set_drops_every_later_section(tmp_path: Path) -> None:
    rec = BuildRecord(tmp_path / "r.json")
    for name in SECTIONS[:5]:
        rec.set(name, {"x": name})
    rec.set("lint", {"findings": []})
    assert list(rec.sections) == ["blueprint", "lint"]
    with pytest.raises(ValueError):
        rec.set("deploy", {})


def test_require_names_the_missing_section_and_the_fix(tmp_path: Path) -> None:
    rec = BuildRecord(tmp_path / "r.json")
    rec.set("blueprint", {"name": "gw"})
    with pytest.raises(RecordError) as e:
        rec.require("blueprint", "compose", "push")
    assert "no 'compose' section" in str(e.value) and "edgeci compose" in str(e.value)


def test_require_refuses_a_failed_section(tmp_path: Path) -> None:
    rec = BuildRecord(tmp_path / "r.json")
    rec.set("blueprint", {"name": "gw"})
    rec.set("lint", {"findings": [{"rule": "name"}]}, status=FAILED)
    with pytest.raises(RecordError, match=r"the 'lint' stage failed.*re-run 'edgeci lint'"):
        rec.require("blueprint", "lint")
    rec2 = BuildRecord(tmp_path / "r2.json")
    rec2.set("boot_test", {}, status=FAILED)
    with pytest.raises(RecordError, match="edgeci boot-test"):
        rec2.require("boot_test")


def test_load_errors_are_one_line_record_errors(tmp_path: Path) -> None:
    with pytest.raises(RecordError, match="no build record"):
        BuildRecord.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(RecordError, match="not valid JSON"):
        BuildRecord.load(bad)
    bad.write_text("[]")
    with pytest.raises(RecordError, match="no 'sections'"):
        BuildRecord.load(bad)
    bad.write_text(json.dumps({"schema": 99, "sections": {}}))
    with pytest.raises(RecordError, match="schema 99 is not supported"):
        BuildRecord.load(bad)


def test_load_or_new(tmp_path: Path) -> None:
    p = tmp_path / "r.json"
    assert BuildRecord.load_or_new(p).sections == {}
    rec = BuildRecord(p)
    rec.set("blueprint", {"name": "gw"})
    rec.save()
    assert BuildRecord.load_or_new(p).blueprint == "gw"


def test_checksum_comes_from_compose(tmp_path: Path) -> None:
    rec = BuildRecord(tmp_path / "r.json")
    with pytest.raises(RecordError, match="no 'compose' section"):
        _ = rec.checksum
    rec.set("compose", {"commit": "c" * 64})
    assert rec.checksum == "c" * 64


def test_secrets_never_reach_the_record_file(tmp_path: Path) -> None:
    register_secret("record-secret-9f8e7d")
    p = tmp_path / "r.json"
    rec = BuildRecord(p)
    rec.set("push", {"destination": "docker://user:record-secret-9f8e7d@registry/edge"})
    rec.save()
    assert "record-secret-9f8e7d" not in p.read_text() and "***" in p.read_text()


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    p = tmp_path / "f.txt"
    atomic_write_text(p, "old")

    with pytest.raises(TypeError):
        atomic_write_text(p, 123)  # type: ignore[arg-type]
    assert p.read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["f.txt"]
    atomic_write_text(p, "new", mode=0o600)
    assert p.read_text() == "new" and (p.stat().st_mode & 0o777) == 0o600
