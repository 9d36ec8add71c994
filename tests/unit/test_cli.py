"""The command line: exit codes 0/1/2, one-line errors, --debug tracebacks, config errors, --version."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from edgeci import __version__, cli

REPO = Path(__file__).resolve().parents[2]
BAD = 'name = "kiosk"\nversion = "1.0.0"\ndescripton = "typo"\n'


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory with the shipped blueprints and no edgeci.yaml."""
    shutil.copytree(REPO / "blueprints", tmp_path / "blueprints")
    monkeypatch.chdir(tmp_path)
    for var in ("EDGECI_CONFIG", "EDGECI_PROJECT_IMAGE_TYPE", "EDGECI_LINT_ALLOW_PLAINTEXT_PASSWORDS"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


def main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_version_in_process(capsys) -> None:
    assert main(capsys, "--version") == (0, f"edgeci {__version__}\n", "")


@pytest.mark.parametrize("argv", [["edgeci", "--version"], [sys.executable, "-m", "edgeci", "--version"]])
def test_version_as_a_program(argv: list[str]) -> None:
    exe = shutil.which(argv[0]) if argv[0] == "edgeci" else argv[0]
    assert exe, "the edgeci console script is not installed (pip install -e .)"
    r = subprocess.run([exe, *argv[1:]], capture_output=True, text=True, timeout=30, check=False)
    assert (r.returncode, r.stdout, r.stderr) == (0, f"edgeci {__version__}\n", "")


def test_version_imports_nothing_heavy() -> None:
    code = ("import sys; from edgeci.cli import main; main(['--version']); "
            "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('yaml', 'junit_xml', 'requests', 'argparse', 'gitlab', 'jenkinsapi') or m == 'edgeci.config')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True)
    assert r.stdout.splitlines()[-1] == ""


def test_help_is_exit_0_and_lists_the_commands(capsys) -> None:
    code, out, _ = main(capsys, "--help")
    assert code == 0 and "lint" in out and "changed" in out and "Exit codes" in out


def test_no_command_and_unknown_command_are_exit_2(capsys) -> None:
    code, _, err = main(capsys)
    assert code == 2 and "usage" in err
    code, _, err = main(capsys, "frobnicate")
    assert code == 2 and "invalid choice" in err


def test_lint_clean_blueprints_exit_0(project: Path, capsys) -> None:
    code, out, err = main(capsys, "lint")
    assert code == 0 and err == ""
    # the image-mode example (blueprints/gateway-bootc/Containerfile) is linted beside the TOML blueprints
    assert out.splitlines() == ["lint: 1 image (Containerfile), 0 errors, 0 warnings",
                                "lint: 2 blueprints, 0 errors, 0 warnings"]
    for name in ("gateway", "kiosk"):
        rec = json.loads((project / "build" / name / "x86_64" / "record.json").read_text())
        bp, lint = rec["sections"]["blueprint"], rec["sections"]["lint"]
        assert (bp["name"], bp["version"], bp["path"], bp["git_sha"]) == (
            name, {"gateway": "1.0.0", "kiosk": "1.2.0"}[name], f"blueprints/{name}.toml", "")
        assert len(bp["sha256"]) == 64 and bp["status"] == "passed"
        assert lint["findings"] == [] and lint["status"] == "passed"
        cases = list(ET.parse(project / "reports" / f"lint-{name}-x86_64.xml").getroot().iter("testcase"))
        assert {c.get("classname") for c in cases} == {f"edgeci.lint.{name}.x86_64"}
        assert len(cases) == 14 and not any(c.find("failure") is not None for c in cases)


def test_lint_unknown_key_exit_1_names_file_line_and_key(project: Path, capsys) -> None:
    (project / "blueprints" / "kiosk.toml").write_text(BAD)
    code, out, _ = main(capsys, "lint")
    assert code == 1
    assert "blueprints/kiosk.toml:3: error: [unknown-key] unknown key 'descripton'; did you mean 'description'?" \
        in out.splitlines()
    rec = json.loads((project / "build" / "kiosk" / "x86_64" / "record.json").read_text())
    assert rec["sections"]["lint"]["status"] == "failed"
    assert rec["sections"]["lint"]["findings"] == [{
        "rule": "unknown-key", "severity": "error", "where": "blueprints/kiosk.toml:3",
        "message": "unknown key 'descripton'; did you mean 'description'?"}]
    cases = {c.get("name"): c for c in ET.parse(project / "reports" / "lint-kiosk-x86_64.xml").getroot()
             .iter("testcase")}
    failure = cases["unknown-key"].find("failure")
    assert failure is not None and "blueprints/kiosk.toml:3" in (failure.get("message") or "")
    assert cases["syntax"].find("failure") is None


def test_lint_syntax_error_is_exit_1_with_line(project: Path, capsys) -> None:
    p = project / "broken.toml"
    p.write_text('name = "broken"\nversion = "1.0.0"\npackages = [\n')
    code, out, _ = main(capsys, "lint", str(p))
    assert code == 1 and f"{p}:3: error: [syntax] invalid TOML: Invalid value; fix the TOML syntax" in out


def test_lint_json_output(project: Path, capsys) -> None:
    (project / "blueprints" / "kiosk.toml").write_text(BAD)
    code, out, _ = main(capsys, "lint", "--json")
    doc = json.loads(out)
    assert code == 1 and doc["errors"] == 1 and doc["warnings"] == 0
    assert [b["name"] for b in doc["blueprints"]] == ["gateway", "kiosk"]
    assert doc["blueprints"][1]["findings"][0]["key"] == "descripton"


def test_lint_missing_path_is_one_line_exit_2(project: Path, capsys) -> None:
    code, out, err = main(capsys, "lint", "nope.toml")
    assert code == 2 and out == ""
    assert err == "edgeci: error: nope.toml: no such file or directory. Check the path.\n"


def test_lint_empty_directory_is_exit_2(project: Path, capsys) -> None:
    (project / "empty").mkdir()
    code, _, err = main(capsys, "lint", "empty")
    assert code == 2 and "no blueprints" in err and len(err.splitlines()) == 1


def test_debug_shows_the_traceback(project: Path, capsys) -> None:
    code, _, err = main(capsys, "--debug", "lint", "nope.toml")
    assert code == 2 and "Traceback (most recent call last)" in err and "BlueprintError" in err
    assert err.rstrip().splitlines()[-1].startswith("edgeci: error: nope.toml")


def test_internal_error_is_one_line_unless_debug(project: Path, capsys, monkeypatch) -> None:
    import edgeci.stages.lint as lint_stage

    def boom(args: object, cfg: object) -> int:
        raise RuntimeError("boom")

    monkeypatch.setattr(lint_stage, "run", boom)
    code, _, err = main(capsys, "lint")
    assert code == 2 and err == ("edgeci: error: internal error: RuntimeError: boom "
                                 "(run with --debug for the traceback)\n")
    # --debug: the whole traceback (through the secret mask), then the one line, exit 2
    assert cli.main(["--debug", "lint"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and 'raise RuntimeError("boom")' in err
    assert err.rstrip().splitlines()[-1] == "edgeci: error: internal error: RuntimeError: boom"


def test_unknown_config_key_is_exit_2_with_file_line_and_suggestion(project: Path, capsys) -> None:
    (project / "edgeci.yaml").write_text("project:\n  image_type: edge-container\ncomposer:\n  backnd: weldr\n")
    code, out, err = main(capsys, "lint")
    assert code == 2 and out == ""
    assert err == ("edgeci: error: " + str(project / "edgeci.yaml") +
                   ":4: composer.backnd: unknown key 'backnd'. Did you mean 'backend'?\n")


def test_set_overrides_config_and_is_validated(project: Path, capsys) -> None:
    code, out, _ = main(capsys, "--set", "project.image_type=edge-installer", "lint")
    assert code == 1 and "[image-type]" in out  # packages are not accepted by edge-installer
    code, _, err = main(capsys, "lint", "--set", "nonsense")
    assert code == 2 and "--set expects KEY=VALUE" in err


def test_env_config_and_allow_plaintext(project: Path, capsys, monkeypatch) -> None:
    p = project / "blueprints" / "kiosk.toml"
    p.write_text(p.read_text().replace('name = "kiosk"\ndescription = "Kiosk session user"',
                                       'name = "kiosk"\ndescription = "Kiosk session user"\npassword = "kiosk"'))
    code, out, _ = main(capsys, "lint")
    assert code == 1 and "[plaintext-password]" in out
    monkeypatch.setenv("EDGECI_LINT_ALLOW_PLAINTEXT_PASSWORDS", "true")
    code, _, _ = main(capsys, "lint")
    assert code == 0


def test_production_version_from_config(project: Path, capsys) -> None:
    (project / "edgeci.yaml").write_text("lint:\n  production_versions:\n    gateway: 1.0.0\n")
    code, out, _ = main(capsys, "lint")
    assert code == 1 and "blueprints/gateway.toml:5: error: [production-version]" in out


def test_relint_keeps_later_sections_when_nothing_changed(project: Path, capsys) -> None:
    from edgeci.record import BuildRecord

    assert main(capsys, "lint")[0] == 0
    path = project / "build" / "gateway" / "x86_64" / "record.json"
    rec = BuildRecord.load(path)
    rec.set("compose", {"commit": "c" * 64})
    rec.save()
    assert main(capsys, "lint")[0] == 0
    assert "compose" in BuildRecord.load(path).sections
    p = project / "blueprints" / "gateway.toml"
    p.write_text(p.read_text().replace('version = "1.0.0"', 'version = "1.0.1"'))
    assert main(capsys, "lint")[0] == 0
    rec = BuildRecord.load(path)
    assert "compose" not in rec.sections and rec.section("blueprint")["version"] == "1.0.1"


def test_production_version_from_a_recorded_promotion(project: Path, capsys) -> None:
    from edgeci.record import BuildRecord

    assert main(capsys, "lint")[0] == 0
    path = project / "build" / "gateway" / "x86_64" / "record.json"
    rec = BuildRecord.load(path)
    rec.set("promote", {"version": "1.0.0", "checksum": "c" * 64})
    rec.save()
    code, out, _ = main(capsys, "lint")
    assert code == 1 and "[production-version] version 1.0.0 is not higher than production's 1.0.0" in out


def test_only_the_named_commands_module_is_imported_for_a_stage_run() -> None:
    from edgeci import cli

    assert cli._command_of(["--config", "lint", "--set", "a=b", "record", "show", "x"]) == "record"
    assert cli._command_of(["--debug", "-c", "x.yaml", "boot-test", "gateway"]) == "boot-test"
    assert cli._command_of(["--version"]) is None and cli._command_of(["nosuch"]) is None
    parser = cli.build_parser("record")
    sub = next(a for a in parser._actions if a.dest == "command")
    assert list(sub.choices) == ["record"]
    assert list(next(a for a in cli.build_parser()._actions if a.dest == "command").choices) == list(cli.COMMANDS)
