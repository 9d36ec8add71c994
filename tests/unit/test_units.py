"""The stage host's set-up (`edgeci stage units`), tested as files against golden copies in tests/data/.

systemd and podman auto-update cannot run in CI (docs/lab.md): the files are compared byte for byte, and
the unit is parsed to check the settings `podman generate systemd --new` produces.
Regenerate the golden files with EDGECI_UPDATE_GOLDEN=1 after an intended change, and review the diff.
"""

from __future__ import annotations

import configparser
import os
import shlex
from pathlib import Path

import pytest
import yaml

from edgeci.config import Config, load_config
from edgeci.errors import ConfigError
from edgeci.stagehost import render_units, units_image

GOLDEN = Path(__file__).resolve().parent.parent / "data" / "stage_units"
PUSH = {"destination": "docker://quay.example.com/edge/edge", "tags": ["1.2.0", "latest"],
        "digest": "sha256:" + "1" * 64, "image_ref": "docker://quay.example.com/edge/edge@sha256:" + "1" * 64}


def config(tmp_path: Path, **sections: dict[str, object]) -> Config:
    path = tmp_path / "edgeci.yaml"
    path.write_text(yaml.safe_dump({"registry": {"image": "docker://quay.example.com/edge/{blueprint}"},
                                    **sections}))
    return load_config(path, env={})


def unit_sections(text: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=True, interpolation=None, comment_prefixes=("#",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    # systemd continuation lines end with a backslash; join them as systemd does
    parser.read_string(text.replace(" \\\n\t", " "))
    return parser


def test_files_match_the_golden_copies(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    files = render_units(cfg, "edge", units_image(cfg, "edge", PUSH))
    assert sorted(files) == ["README.md", "container-edge-stage.service", "enable-auto-update.sh", "podman-run.sh"]
    if os.environ.get("EDGECI_UPDATE_GOLDEN"):
        GOLDEN.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (GOLDEN / name).write_text(text)
    for name, text in files.items():
        assert text == (GOLDEN / name).read_text(), f"{name} differs from tests/data/stage_units/{name}"


def test_unit_is_what_podman_generate_systemd_new_writes(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    text = render_units(cfg, "edge", units_image(cfg, "edge", PUSH))["container-edge-stage.service"]
    unit = unit_sections(text)
    svc = unit["Service"]
    assert svc["ExecStartPre"] == "/bin/rm -f %t/%n.ctr-id"
    start = shlex.split(svc["ExecStart"])
    assert start[:2] == ["/usr/bin/podman", "run"]
    for flag in ("--cidfile=%t/%n.ctr-id", "--cgroups=no-conmon", "--rm", "--sdnotify=conmon", "-d", "--replace"):
        assert flag in start
    assert start[start.index("--name") + 1] == "edge-stage"
    assert start[start.index("--label") + 1] == "io.containers.autoupdate=registry"
    assert start[start.index("-p") + 1] == "8080:8080"
    assert start[-1] == "quay.example.com/edge/edge:latest"  # by tag: auto-update follows the tag
    assert svc["ExecStop"] == "/usr/bin/podman stop --ignore -t 10 --cidfile=%t/%n.ctr-id"
    assert svc["ExecStopPost"] == "/usr/bin/podman rm -f --ignore -t 10 --cidfile=%t/%n.ctr-id"
    assert svc["Type"] == "notify"
    assert svc["NotifyAccess"] == "all"
    assert svc["Restart"] == "on-failure"
    assert svc["Environment"] == "PODMAN_SYSTEMD_UNIT=%n"
    assert unit["Install"]["WantedBy"] == "default.target"
    assert unit["Unit"]["RequiresMountsFor"] == "%t/containers"


def test_run_line_and_timer(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    files = render_units(cfg, "edge", units_image(cfg, "edge", PUSH))
    run_line = next(line for line in files["podman-run.sh"].splitlines() if line.startswith("exec "))
    argv = shlex.split(run_line)[1:]
    assert argv[:2] == ["podman", "run"]
    assert "io.containers.autoupdate=registry" in argv and "8080:8080" in argv
    assert argv[-1] == "quay.example.com/edge/edge:latest"
    enable = files["enable-auto-update.sh"]
    assert "systemctl enable --now podman-auto-update.timer" in enable
    assert "systemctl enable --now container-edge-stage.service" in enable


def test_private_plain_http_registry_and_stage_port(tmp_path: Path) -> None:
    cfg = config(tmp_path, registry={"image": "docker://reg.lan:5000/edge/{blueprint}", "tls_verify": False},
                 stage={"url": "http://stage.lan:8090/repo", "host_authfile": "/etc/containers/auth.json",
                        "container_name": "stage-{blueprint}"})
    files = render_units(cfg, "kiosk", units_image(cfg, "kiosk", None))
    unit = unit_sections(files["container-stage-kiosk.service"])
    start = shlex.split(unit["Service"]["ExecStart"])
    assert start[-1] == "reg.lan:5000/edge/kiosk:latest"
    assert start[start.index("-p") + 1] == "8090:8080"
    assert "--authfile" in start and "io.containers.autoupdate.authfile=/etc/containers/auth.json" in start
    assert "--tls-verify=false" in start
    assert "insecure=true" in files["README.md"]
    assert "podman login --authfile /etc/containers/auth.json reg.lan:5000" in files["README.md"]


def test_an_oci_directory_cannot_feed_a_stage_host(tmp_path: Path) -> None:
    cfg = load_config(None, env={}, root=tmp_path)  # the embedded default: oci:build/oci/{blueprint}
    with pytest.raises(ConfigError, match="podman auto-update needs a registry"):
        units_image(cfg, "edge", None)


def test_cli_writes_the_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from edgeci.cli import main

    config(tmp_path)
    out = tmp_path / "host"
    assert main(["-c", str(tmp_path / "edgeci.yaml"), "stage", "units", "edge", "--output", str(out)]) == 0
    assert (out / "container-edge-stage.service").read_text() == (GOLDEN / "container-edge-stage.service").read_text()
    assert os.access(out / "enable-auto-update.sh", os.X_OK)
    assert "wrote" in capsys.readouterr().out
