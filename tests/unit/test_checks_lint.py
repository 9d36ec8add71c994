"""checks.yaml under lint: names that reach guest scripts are validated, every rendered value is quoted, and the
lint stage reports the checks file's problems with file:line."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from edgeci.checks import ChecksError, parse_checks, render_scripts
from tests.fixtures.composed import edgeci_cli

BP = 'name = "edge"\nversion = "1.0.0"\n'


@pytest.mark.parametrize("value", ["'x$(id)\".service'", "'sshd.service; reboot'", "'a b.service'",
                                   "\"sshd\\n.service\"", "'sshd.bogus'"])
def test_service_enabled_must_be_a_systemd_unit_name(value: str) -> None:
    with pytest.raises(ChecksError) as e:
        parse_checks(f"checks:\n  - name: svc\n    service_enabled: {value}\n", "edge.checks.yaml")
    assert e.value.where == "edge.checks.yaml:3" and "not a systemd unit name" in e.value.message


@pytest.mark.parametrize("kind,value", [("user_exists", "'$(id)'"), ("group_exists", "'a b'"),
                                        ("user_exists", "'1234'")])
def test_user_and_group_names_are_validated(kind: str, value: str) -> None:
    with pytest.raises(ChecksError) as e:
        parse_checks(f"checks:\n  - name: who\n    {kind}: {value}\n", "edge.checks.yaml")
    assert e.value.where == "edge.checks.yaml:3" and "not a valid name" in e.value.message


def test_paths_with_a_newline_are_refused() -> None:
    with pytest.raises(ChecksError) as e:
        parse_checks('checks:\n  - name: f\n    file_exists: "/etc/motd\\nrm -rf /"\n', "c.yaml")
    assert e.value.where == "c.yaml:3" and "control character" in e.value.message


def test_a_unit_name_with_shell_characters_systemd_allows_stays_quoted(tmp_path: Path) -> None:
    # a backslash is allowed in unit names (systemd's \x2d escapes): it must reach the output as written
    cf = parse_checks("checks:\n  - name: svc\n    service_enabled: 'a\\\\b.service'\n", "c.yaml")
    (script,) = render_scripts(cf, "1.0.0").values()
    sh = shutil.which("sh") or "/bin/sh"
    wants = tmp_path / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True)
    (wants / "a\\\\b.service").symlink_to("/usr/lib/systemd/system/a.service")
    script = script.replace("/etc/systemd/system", str(tmp_path / "etc/systemd/system"))
    r = subprocess.run([sh, "-c", script], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("a\\\\b.service enabled: "), r.stdout


def _project(tmp_path: Path, checks: str) -> Path:
    (tmp_path / "blueprints").mkdir()
    (tmp_path / "blueprints/edge.toml").write_text(BP)
    (tmp_path / "blueprints/edge.checks.yaml").write_text(checks)
    return tmp_path


@pytest.mark.parametrize("checks,line,words", [
    ("checks:\n  - name: a\n    file_exists: /a\n  - name: a\n    file_exists: /b\n", 4, "duplicate check name 'a'"),
    ("checks:\n  - name: a\n    file_exist: /a\n", 3, "unknown key 'file_exist'"),
    ("checks:\n  - name: a\n    file_exists: etc/motd\n", 3, "must be an absolute path"),
    ("checks:\n  - name: a\n   file_exists: /a\n", 3, "invalid YAML"),
    ("checks:\n  - name: a\n    service_enabled: 'x$(id)\".service'\n", 3, "not a systemd unit name"),
])
def test_lint_reports_the_checks_file_with_file_and_line(tmp_path: Path, checks: str, line: int, words: str) -> None:
    project = _project(tmp_path, checks)
    r = edgeci_cli(["lint"], cwd=project)
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"blueprints/edge.checks.yaml:{line}: error: [checks]" in r.stdout and words in r.stdout, r.stdout
