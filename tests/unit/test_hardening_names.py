"""Names that become paths, shell words and systemd unit lines: checked where they are read, quoted where they
are written (the stage host's set-up), and never a way out of the project directory."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from edgeci.cli import main
from edgeci.config import load_config
from edgeci.errors import ConfigError
from edgeci.stagehost import render_units, systemd_quote, units_image

PUSH = {"destination": "docker://quay.example.com/edge/edge", "tags": ["1.2.0", "latest"],
        "digest": "sha256:" + "1" * 64}


def project(tmp_path: Path, **sections: object) -> Path:
    """A project two levels down, so that '../../..' from build/ lands inside tmp_path where the test can look."""
    root = tmp_path / "a" / "b" / "project"
    (root / "blueprints").mkdir(parents=True, exist_ok=True)
    (root / "blueprints" / "edge.toml").write_text('name = "edge"\nversion = "1.0.0"\n')
    (root / "edgeci.yaml").write_text(yaml.safe_dump(
        {"registry": {"image": "docker://quay.example.com/edge/{blueprint}"}, **sections}))
    return root


def files_under(d: Path) -> set[Path]:
    return {p for p in d.rglob("*")}


@pytest.mark.parametrize("argv", [
    ["stage", "units", "edge", "--arch", "../../../../outside"],
    ["stage", "units", "../../../../outside", "--arch", "x86_64"],
    ["compose", "edge", "--arch", "../../../../outside"],
    ["stage", "serve", "edge", "--arch", "x86_64/../../../../outside"],
    ["record", "show", "edge", "--arch", "../../../outside"],
    ["promote", "edge", "--arch", "sparc"],
])
def test_arch_and_name_cannot_leave_the_project(tmp_path: Path, argv: list[str],
                                                capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    root = project(tmp_path)
    monkeypatch.chdir(root)
    before = files_under(tmp_path)
    assert main(["-c", str(root / "edgeci.yaml"), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ("--arch" in err[0] or "BLUEPRINT" in err[0]), err
    assert "x86_64, aarch64, ppc64le, s390x" in err[0] or "is not a blueprint name" in err[0]
    assert files_under(tmp_path) == before  # nothing written anywhere, inside the project or out


def test_the_four_arches_are_accepted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = project(tmp_path)
    monkeypatch.chdir(root)
    for arch in ("x86_64", "aarch64", "ppc64le", "s390x"):
        out = root / "host" / arch
        assert main(["stage", "units", "edge", "--arch", arch, "-o", str(out), "-c", str(root / "edgeci.yaml")]) == 0
        assert (out / "container-edge-stage.service").is_file()
    for arch in ("x86-64", "amd64", "X86_64"):  # close is not enough: the closed set, exactly
        assert main(["stage", "units", "edge", "--arch", arch, "-o", str(root / "host" / "bad"),
                     "-c", str(root / "edgeci.yaml")]) == 2
        assert not (root / "host" / "bad").exists()


def test_render_refuses_a_container_name_that_bypassed_the_loader(tmp_path: Path) -> None:
    cfg = load_config(project(tmp_path) / "edgeci.yaml", env={})
    image = units_image(cfg, "edge", PUSH)
    for bad in ("edge$(touch X)", "x\nExecStartPre=/bin/touch /tmp/pwned", "../../../etc/x", "-rm"):
        cfg.stage.container_name = bad
        with pytest.raises(ConfigError, match=r"stage\.container_name"):
            render_units(cfg, "edge", image)
    cfg.stage.container_name = "edge-stage"
    with pytest.raises(ConfigError, match="not a blueprint name"):
        render_units(cfg, "../edge", image)
    with pytest.raises(ConfigError, match=r"registry\.image"):
        render_units(cfg, "edge", "quay.example.com/edge:latest$(id)")


def test_authfile_with_a_newline_cannot_inject_a_unit_line(tmp_path: Path) -> None:
    root = project(tmp_path, stage={"host_authfile": "/etc/auth.json\nExecStartPre=/bin/touch /tmp/pwned"})
    with pytest.raises(ConfigError, match=r"edgeci.yaml:\d+: stage.host_authfile: the path contains a control"):
        load_config(root / "edgeci.yaml", env={})
    cfg = load_config(project(tmp_path) / "edgeci.yaml", env={})
    cfg.stage.host_authfile = "/etc/auth.json\nExecStartPre=/bin/touch /tmp/pwned"
    with pytest.raises(ConfigError, match=r"stage\.host_authfile"):
        render_units(cfg, "edge", units_image(cfg, "edge", PUSH))


def test_shell_script_and_unit_pass_every_value_as_one_word(tmp_path: Path) -> None:
    """podman-run.sh run by a real sh, with `podman run` replaced by printf: each argument on its own line, and
    nothing in the values executed; the unit has the same values in systemd's quoting."""
    marker = tmp_path / "pwned"
    authfile = f"/etc/containers/my auth $(touch {marker}) `touch {marker}`;touch {marker}.json"
    cfg = load_config(project(tmp_path, stage={"host_authfile": authfile}) / "edgeci.yaml", env={})
    files = render_units(cfg, "edge", units_image(cfg, "edge", PUSH))
    script = files["podman-run.sh"].replace("exec podman run ", "exec printf '%s\\n' ")
    assert script != files["podman-run.sh"]
    r = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True, cwd=tmp_path)
    args = r.stdout.splitlines()
    assert args[args.index("--authfile") + 1] == authfile
    assert f"io.containers.autoupdate.authfile={authfile}" in args
    assert args[-1] == "quay.example.com/edge/edge:latest"
    assert not list(tmp_path.glob("pwned*"))
    unit = files["container-edge-stage.service"]
    quoted = authfile.replace("\\", "\\\\").replace('"', '\\"').replace("$", "$$")
    assert f'--authfile "{quoted}"' in unit


def test_systemd_words_are_quoted_by_systemd_rules(tmp_path: Path) -> None:
    assert systemd_quote("edge-stage") == "edge-stage"
    assert systemd_quote("8080:8080") == "8080:8080"
    assert systemd_quote("/etc/a b") == '"/etc/a b"'
    assert systemd_quote('/etc/$HOME/%h/"x"\\') == '"/etc/$$HOME/%%h/\\"x\\"\\\\"'
    authfile = "/etc/containers/auth %n $USER.json"
    cfg = load_config(project(tmp_path, stage={"host_authfile": authfile}) / "edgeci.yaml", env={})
    unit = render_units(cfg, "edge", units_image(cfg, "edge", PUSH))["container-edge-stage.service"]
    assert '--authfile "/etc/containers/auth %%n $$USER.json"' in unit
    assert '--label "io.containers.autoupdate.authfile=/etc/containers/auth %%n $$USER.json"' in unit
    keys = [line.split("=", 1)[0] for line in unit.splitlines() if line and not line.startswith(("#", "\t", "["))]
    assert keys.count("ExecStartPre") == 1 and keys.count("ExecStart") == 1


def test_units_written_inside_the_output_directory_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = project(tmp_path)
    monkeypatch.chdir(root)
    monkeypatch.setenv("EDGECI_STAGE_CONTAINER_NAME", "../../../../escaped")
    before = files_under(tmp_path)
    assert main(["stage", "units", "edge", "-o", str(root / "out"), "-c", str(root / "edgeci.yaml")]) == 2
    assert files_under(tmp_path) == before
    assert not os.path.exists(tmp_path / "escaped.service")
