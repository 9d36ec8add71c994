"""edgeci.yaml hardening: security settings only go up from the environment or --set; aliases, duplicate keys,
negative and non-finite numbers, names and arches are configuration errors with file:line (exit 2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeci.cli import main
from edgeci.config import load_config
from edgeci.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "edgeci.yaml"
    p.write_text(text)
    return p


FILE = """\
gate:
  source: gitlab
  approvals_required: 2
  allowed_users: [alice, bob]
  allowed_groups: [release-managers]
  windows: ["Mon-Fri 08:00-17:00"]
  freeze: ["2026-12-20..2027-01-05"]
  gitlab: {url: "https://gitlab.example.com", project: "platform/edge"}
prod:
  gpg_key: 0123456789ABCDEF0123456789ABCDEF01234567
  gpg_homedir: /etc/edgeci/gnupg
"""

LOWERING = [
    ({"EDGECI_GATE_APPROVALS_REQUIRED": "0"}, {}, "gate.approvals_required", "2 -> 0 approvals"),
    ({}, {"gate.approvals_required": "1"}, "gate.approvals_required", "2 -> 1 approvals"),
    ({"EDGECI_GATE_SOURCE": "local"}, {}, "gate.source", "gitlab -> local"),
    ({"EDGECI_GATE_ALLOW_FORK": "true"}, {}, "gate.allow_fork", "false -> true"),
    ({}, {"gate.allowed_users": "mallory"}, "gate.allowed_users", "admits users"),
    ({}, {"gate.allowed_users": [], "gate.allowed_groups": []}, "gate.allowed_", "emptied"),
    ({}, {"gate.allowed_groups": "everyone"}, "gate.allowed_groups", "admits groups"),
    ({"EDGECI_GATE_WINDOWS": ""}, {}, "gate.windows", "widens or removes"),
    ({}, {"gate.windows": ["Mon-Sun 00:00-23:59"]}, "gate.windows", "widens or removes"),
    ({}, {"gate.freeze": []}, "gate.freeze", "removes a freeze"),
    ({"EDGECI_PROD_GPG_KEY": ""}, {}, "prod.gpg_key", "production would be unsigned"),
    ({}, {"prod.gpg_key": "FEDCBA9876543210"}, "prod.gpg_key", "another key"),
    ({"EDGECI_PROD_GPG_HOMEDIR": "/tmp/mine"}, {}, "prod.gpg_homedir", "another keyring"),
]


@pytest.mark.parametrize(("env", "overrides", "key", "how"), LOWERING)
def test_security_settings_cannot_be_lowered(tmp_path: Path, env: dict[str, str], overrides: dict[str, object],
                                             key: str, how: str) -> None:
    p = write(tmp_path, FILE)
    load_config(p, env={})  # the file itself is fine
    with pytest.raises(ConfigError) as e:
        load_config(p, env=env, overrides=overrides)
    msg = str(e.value)
    assert e.value.exit_code == 2 and "\n" not in msg
    origin = "environment EDGECI_" if env else "command line (--set "
    assert msg.startswith(origin) and key in msg and how in msg
    assert "can only be changed in edgeci.yaml (or the production host's trust policy)" in msg


RAISING = [
    {"gate.approvals_required": "3"},
    {"gate.allowed_users": "alice"},
    {"gate.allowed_groups": "release-managers", "gate.allowed_users": ["bob"]},
    {"gate.freeze": ["2026-12-20..2027-01-05", "2026-08-01..2026-08-15"]},
    {"gate.windows": ["Mon-Fri 08:00-17:00"]},
    {"gate.source": "jenkins"},
    {"prod.gpg_key": "0123456789ABCDEF0123456789ABCDEF01234567"},
]


@pytest.mark.parametrize("overrides", RAISING)
def test_security_settings_can_be_raised_or_kept_but_not_lowered_alongside(tmp_path: Path,
                                                                          overrides: dict[str, object]) -> None:
    cfg = load_config(write(tmp_path, FILE), env={}, overrides=overrides)
    assert cfg.gate.approvals_required >= 2 and cfg.prod.gpg_key
    with pytest.raises(ConfigError, match=r"gate\.allow_fork: cannot be lowered"):
        load_config(write(tmp_path, FILE), env={"EDGECI_GATE_ALLOW_FORK": "yes"}, overrides=overrides)


def test_without_a_file_the_defaults_are_the_floor(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^environment EDGECI_GATE_APPROVALS_REQUIRED: .*1 -> 0 approvals"):
        load_config(None, env={"EDGECI_GATE_APPROVALS_REQUIRED": "0"}, root=tmp_path)
    cfg = load_config(None, env={"EDGECI_PROD_GPG_KEY": "ABCDEF", "EDGECI_GATE_WINDOWS": "Mon-Fri 08:00-17:00",
                                 "EDGECI_GATE_ALLOWED_USERS": "alice"}, root=tmp_path)
    assert (cfg.prod.gpg_key, cfg.gate.windows, cfg.gate.allowed_users) == ("ABCDEF", ["Mon-Fri 08:00-17:00"],
                                                                           ["alice"])


def test_cli_refuses_a_lowering_override_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, FILE)
    monkeypatch.setenv("EDGECI_GATE_APPROVALS_REQUIRED", "0")
    assert main(["history", "edge"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "EDGECI_GATE_APPROVALS_REQUIRED" in err[0] and "cannot be lowered" in err[0]


def test_recursive_alias_is_a_configuration_error(tmp_path: Path) -> None:
    p = write(tmp_path, "project:\n  build_dir: build\nlint:\n  production_versions: &v\n    self: *v\n")
    with pytest.raises(ConfigError, match=r"edgeci.yaml:5: recursive alias"):
        load_config(p, env={})
    p = write(tmp_path, "x: &a [*a]\n")
    with pytest.raises(ConfigError, match=r"edgeci.yaml:1: recursive alias"):
        load_config(p, env={})


def test_alias_bomb_is_refused_without_expanding_it(tmp_path: Path) -> None:
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    prev = "a"
    for n in "bcdefghi":  # 9**9 values once expanded
        lines.append(f"{n}: &{n} [" + ", ".join([f"*{prev}"] * 9) + "]")
        prev = n
    lines.append(f"project:\n  build_dir: *{prev}")
    p = write(tmp_path, "\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match=r"edgeci.yaml:\d+: the file expands to more than \d+ values"):
        load_config(p, env={})


def test_recursive_alias_behind_a_merge_key_is_refused_and_small_aliases_still_work(tmp_path: Path) -> None:
    p = write(tmp_path, "blueprints:\n  gw: &bp\n    arch: [x86_64]\n    <<: *bp\n")
    with pytest.raises(ConfigError, match=r"edgeci.yaml:2: recursive alias"):
        load_config(p, env={})
    p = write(tmp_path, "gate:\n  allowed_users: &people [alice, bob]\n"
                        "lint:\n  production_versions: {a: '1.0.0'}\n"
                        "blueprints:\n  gw: &bp {arch: [x86_64]}\n  kiosk:\n    <<: *bp\n    distro: rhel-10\n")
    cfg = load_config(p, env={})
    assert cfg.gate.allowed_users == ["alice", "bob"]
    assert cfg.blueprints["kiosk"].arch == ["x86_64"] and cfg.blueprints["kiosk"].distro == "rhel-10"


def test_duplicate_keys_name_both_lines(tmp_path: Path) -> None:
    p = write(tmp_path, "prod:\n  retention: 10\n  delta_args: []\n  retention: 2\n")
    with pytest.raises(ConfigError,
                       match=r"edgeci.yaml:4: prod.retention: duplicate key 'retention' \(first on line 2\)"):
        load_config(p, env={})
    p = write(tmp_path, "gate:\n  approvals_required: 2\ngate:\n  approvals_required: 0\n")
    with pytest.raises(ConfigError, match=r"edgeci.yaml:3: gate: duplicate key 'gate' \(first on line 1\)"):
        load_config(p, env={})


@pytest.mark.parametrize(("text", "env", "message"), [
    ("prod:\n  retention: -1\n", {}, r"edgeci.yaml:2: prod.retention: must be 0 or more"),
    ("prod:\n  delta_from_releases: -3\n", {}, r"edgeci.yaml:2: prod.delta_from_releases: must be 0 or more"),
    ("prod:\n  lock_timeout: .nan\n", {}, r"edgeci.yaml:2: prod.lock_timeout: must be a finite number"),
    ("composer:\n  deadline: .inf\n", {}, r"edgeci.yaml:2: composer.deadline: must be a finite number"),
    ("stage:\n  wait_deadline: -.inf\n", {}, r"edgeci.yaml:2: stage.wait_deadline: must be a finite number"),
    ("", {"EDGECI_BOOT_TEST_TIMEOUT": "nan"}, r"^environment EDGECI_BOOT_TEST_TIMEOUT: .*must be a finite"),
    ("", {"EDGECI_STAGE_WAIT_INTERVAL": "-5"}, r"^environment EDGECI_STAGE_WAIT_INTERVAL: .*must be 0 or more"),
    ("stage:\n  port: 70000\n", {}, r"edgeci.yaml:2: stage.port: port 70000 is out of range"),
])
def test_numbers_must_be_finite_and_not_negative(tmp_path: Path, text: str, env: dict[str, str],
                                                 message: str) -> None:
    with pytest.raises(ConfigError, match=message) as e:
        load_config(write(tmp_path, text), env=env)
    assert e.value.exit_code == 2


@pytest.mark.parametrize("name", ["edge$(touch X)", "edge\nExecStartPre=/bin/touch /tmp/x", "../../outside",
                                  "-edge", "edge stage", "edge;id", ""])
def test_container_name_must_be_a_podman_name(tmp_path: Path, name: str) -> None:
    p = write(tmp_path, "stage:\n  container_name: " + repr(name).replace("'", '"') + "\n")
    with pytest.raises(ConfigError, match=r"edgeci.yaml:2: stage.container_name: .* is not a container name"):
        load_config(p, env={})
    with pytest.raises(ConfigError, match=r"EDGECI_STAGE_CONTAINER_NAME: stage.container_name"):
        load_config(None, env={"EDGECI_STAGE_CONTAINER_NAME": name}, root=tmp_path / "none")


def test_good_container_names_and_a_bad_one(tmp_path: Path) -> None:
    for name in ("edge-stage", "stage-{blueprint}", "edge_stage.1"):
        assert load_config(None, env={"EDGECI_STAGE_CONTAINER_NAME": name}, root=tmp_path).stage.container_name == name
    with pytest.raises(ConfigError, match=r"stage\.container_name"):
        load_config(None, env={"EDGECI_STAGE_CONTAINER_NAME": "stage-{blueprint}$(id)"}, root=tmp_path)


@pytest.mark.parametrize(("text", "message"), [
    ("project:\n  arch: ../../../../outside\n", r"edgeci.yaml:2: project.arch: '../../../../outside' is not allowed"),
    ("blueprints:\n  gw:\n    arch: [x86_64, ../x]\n", r"edgeci.yaml:3: blueprints.gw.arch.1: '../x' is not allowed"),
    ("blueprints:\n  ../gw:\n    arch: [x86_64]\n", r"edgeci.yaml:2: blueprints.../gw: .* is not a blueprint name"),
])
def test_arches_and_blueprint_names_in_the_file(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text), env={})


IMAGE_MODE_FILE = """\
image_mode:
  signing: gpg
  gpg_key: 0123456789ABCDEF0123456789ABCDEF01234567
  gpg_homedir: /etc/edgeci/gnupg
  allowed_base_tags: ["registry.redhat.io/rhel10/rhel-bootc:10.*"]
  hadolint: required
"""


@pytest.mark.parametrize(("env", "overrides", "key", "how"), [
    ({"EDGECI_IMAGE_MODE_SIGNING": "none"}, {}, "image_mode.signing", "gpg -> none"),
    ({}, {"image_mode.gpg_key": ""}, "image_mode.gpg_key", "images would be unsigned"),
    ({"EDGECI_IMAGE_MODE_GPG_HOMEDIR": "/tmp/mine"}, {}, "image_mode.gpg_homedir", "another keyring"),
    ({}, {"image_mode.allowed_base_tags": ["quay.io/*"]}, "image_mode.allowed_base_tags", "allows base tags"),
    ({"EDGECI_IMAGE_MODE_HADOLINT": "off"}, {}, "image_mode.hadolint", "required -> off"),
    ({}, {"image_mode.base": "quay.io/x/y:latest"}, "image_mode.base", "another base image"),
])
def test_image_mode_security_settings_cannot_be_lowered(tmp_path: Path, env: dict[str, str],
                                                        overrides: dict[str, object], key: str, how: str) -> None:
    p = write(tmp_path, IMAGE_MODE_FILE)
    load_config(p, env={})
    with pytest.raises(ConfigError) as e:
        load_config(p, env=env, overrides=overrides)
    assert e.value.exit_code == 2 and key in str(e.value) and how in str(e.value)


def test_image_mode_settings_can_be_raised(tmp_path: Path) -> None:
    p = write(tmp_path, IMAGE_MODE_FILE.replace("hadolint: required", "hadolint: auto"))
    cfg = load_config(p, env={"EDGECI_IMAGE_MODE_HADOLINT": "required", "EDGECI_IMAGE_MODE_PROD_TAG": "prod"},
                      overrides={"image_mode.allowed_base_tags": []})
    assert cfg.image_mode.hadolint == "required" and cfg.image_mode.allowed_base_tags == []
    assert cfg.image_mode.prod_tag == "prod"  # not a security setting
