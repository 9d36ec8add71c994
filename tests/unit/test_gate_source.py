"""The gate's approval source is a security setting: the command line cannot swap it for a weaker one."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeci.cli import main


def test_the_gate_cannot_be_pointed_at_local_approvals_from_the_command_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """gate.source gitlab in edgeci.yaml: `--source local` (files anyone can write) is a lowered setting, exit 2."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "blueprints").mkdir()
    (tmp_path / "blueprints" / "edge.toml").write_text('name = "edge"\nversion = "1.0.1"\n')
    (tmp_path / "edgeci.yaml").write_text("gate:\n  source: gitlab\n")
    assert main(["gate", "edge", "--source", "local"]) == 2
    assert "--source local would lower gate.source 'gitlab'" in capsys.readouterr().err
