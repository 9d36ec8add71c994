"""edgeci.yaml loading: defaults, strict keys with did-you-mean and line, types, precedence."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeci.config import Config, load_config
from edgeci.errors import ConfigError
from edgeci.tools.run import mask


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "edgeci.yaml"
    p.write_text(text)
    return p


def test_no_file_is_the_embedded_default(tmp_path: Path) -> None:
    cfg = load_config(None, env={}, root=tmp_path)
    assert cfg == Config()
    assert cfg.source == "(embedded default)" and cfg.root == tmp_path
    assert cfg.build_dir == tmp_path / "build" and cfg.reports_dir == tmp_path / "reports"
    assert cfg.blueprints_dir == tmp_path / "blueprints"
    assert (cfg.composer.backend, cfg.gate.source, cfg.boot_test.backend) == ("local", "local", "auto")
    assert cfg.image_type("gateway") == "edge-container" and cfg.arches("gateway") == ["x86_64"]


def test_file_in_working_directory_is_found(tmp_path: Path) -> None:
    write(tmp_path, "composer:\n  backend: weldr\n")
    cfg = load_config(None, env={}, root=tmp_path)
    assert cfg.composer.backend == "weldr" and cfg.source == str(tmp_path / "edgeci.yaml")


def test_edgeci_config_env_names_the_file(tmp_path: Path) -> None:
    p = tmp_path / "other.yaml"
    p.write_text("gate:\n  approvals_required: 2\n")
    cfg = load_config(None, env={"EDGECI_CONFIG": str(p)}, root=tmp_path / "nowhere")
    assert cfg.gate.approvals_required == 2 and cfg.root == tmp_path


def test_empty_file_is_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, ""), env={}) == Config()


def test_per_blueprint_settings(tmp_path: Path) -> None:
    p = write(tmp_path, """
blueprints:
  gateway:
    image_type: edge-installer
    arch: [x86_64, aarch64]
    distro: rhel-10
  kiosk:
    ref: corp/kiosk/stable
""")
    cfg = load_config(p, env={})
    assert cfg.image_type("gateway") == "edge-installer" and cfg.image_type("other") == "edge-container"
    assert cfg.arches("gateway") == ["x86_64", "aarch64"]
    assert cfg.ref("gateway", "aarch64") == "rhel/10/aarch64/edge/gateway"  # several blueprints: one ref each
    assert cfg.ref("kiosk") == "corp/kiosk/stable"


def test_single_blueprint_uses_the_plain_ref(tmp_path: Path) -> None:
    (tmp_path / "blueprints").mkdir()
    (tmp_path / "blueprints" / "gateway.toml").write_text('name = "gateway"\n')
    cfg = load_config(None, env={}, root=tmp_path)
    assert cfg.ref("gateway") == "rhel/9/x86_64/edge"
    (tmp_path / "blueprints" / "kiosk.toml").write_text('name = "kiosk"\n')
    assert cfg.ref("gateway") == "rhel/9/x86_64/edge/gateway"


def test_unknown_key_names_file_line_and_suggestion(tmp_path: Path) -> None:
    p = write(tmp_path, "composer:\n  backend: weldr\n  sockte: /run/x.sock\n")
    with pytest.raises(ConfigError) as e:
        load_config(p, env={})
    msg = str(e.value)
    assert msg.startswith(f"{p}:3: composer.sockte: unknown key 'sockte'")
    assert "Did you mean 'socket'?" in msg and not msg.endswith("?.") and "\n" not in msg


def test_unknown_section_and_nested_unknown_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"edgeci.yaml:1: composr: unknown key 'composr'.*Did you mean 'composer'"):
        load_config(write(tmp_path, "composr: {}\n"), env={})
    p = write(tmp_path, "gate:\n  gitlab:\n    projet: grp/edge\n")
    with pytest.raises(ConfigError, match=r"edgeci.yaml:3: gate.gitlab.projet.*Did you mean 'project'"):
        load_config(p, env={})
    p = write(tmp_path, "blueprints:\n  gateway:\n    imagetype: edge-commit\n")
    with pytest.raises(ConfigError, match=r":3: blueprints.gateway.imagetype.*Did you mean 'image_type'"):
        load_config(p, env={})


def test_wrong_types(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r":2: gate.approvals_required: must be an integer, not 'many'"):
        load_config(write(tmp_path, "gate:\n  approvals_required: many\n"), env={})
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(write(tmp_path, "composer: weldr\n"), env={})
    with pytest.raises(ConfigError, match="must be true or false"):
        load_config(write(tmp_path, "registry:\n  tls_verify: maybe\n"), env={})
    with pytest.raises(ConfigError, match="must be a list"):
        load_config(write(tmp_path, "registry:\n  tags: {a: 1}\n"), env={})


def test_scalars_are_converted_where_unambiguous(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "registry:\n  tags: v1\n  tls_verify: 'no'\ncomposer:\n  deadline: 60\n"),
                      env={})
    assert cfg.registry.tags == ["v1"] and cfg.registry.tls_verify is False and cfg.composer.deadline == 60.0


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"edgeci.yaml:3: invalid YAML"):
        load_config(write(tmp_path, "composer:\n  backend: weldr\n bad: [\n"), env={})


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"), env={})


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml", env={})


def test_choices_are_validated_with_suggestion(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r":2: composer.backend: 'wledr' is not allowed. Did you mean 'weldr'"):
        load_config(write(tmp_path, "composer:\n  backend: wledr\n"), env={})
    with pytest.raises(ConfigError, match=r"blueprints.gw.image_type"):
        load_config(write(tmp_path, "blueprints:\n  gw:\n    image_type: edge-iso\n"), env={})
    with pytest.raises(ConfigError, match=r"stage.url is empty"):
        load_config(write(tmp_path, "stage:\n  mode: wait\n"), env={})


def test_precedence_cli_over_env_over_file_over_default(tmp_path: Path) -> None:
    p = write(tmp_path, "composer:\n  backend: weldr\n  poll_interval: 3\n")
    env = {"EDGECI_COMPOSER_BACKEND": "cloud", "EDGECI_COMPOSER_URL": "https://api.example.com"}
    assert load_config(p, env={}).composer.backend == "weldr"
    cfg = load_config(p, env=env)
    assert (cfg.composer.backend, cfg.composer.url, cfg.composer.poll_interval) == ("cloud",
                                                                                  "https://api.example.com", 3.0)
    cfg = load_config(p, env=env, overrides={"composer.backend": "local"})
    assert cfg.composer.backend == "local" and cfg.composer.deadline == 3600.0


def test_env_values_are_converted_and_validated(tmp_path: Path) -> None:
    cfg = load_config(None, env={"EDGECI_REGISTRY_TLS_VERIFY": "false", "EDGECI_BOOT_TEST_MEMORY": "1024"},
                      root=tmp_path)
    assert cfg.registry.tls_verify is False and cfg.boot_test.memory == 1024
    with pytest.raises(ConfigError, match=r"^environment EDGECI_BOOT_TEST_MEMORY: boot_test.memory: must be an int"):
        load_config(None, env={"EDGECI_BOOT_TEST_MEMORY": "lots"}, root=tmp_path)


def test_unknown_override_key_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^command line \(--set composer.backnd\): composer.backnd: unknown key "
                                          r"'backnd'. Did you mean 'backend'\?$"):
        load_config(None, env={}, overrides={"composer.backnd": "weldr"}, root=tmp_path)


def test_secret_comes_from_env_and_is_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGECI_REGISTRY_PASSWORD", "pa55-config-secret")
    assert Config().secret("REGISTRY_PASSWORD") == "pa55-config-secret"
    assert mask("login pa55-config-secret ok") == "login *** ok"
    monkeypatch.delenv("EDGECI_GITLAB_TOKEN", raising=False)
    assert Config().secret("gitlab_token") == ""


def test_paths_are_relative_to_the_config_and_substituted(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "stage:\n  dir: build/stage/{blueprint}\n"), env={})
    assert cfg.path(cfg.stage.dir, blueprint="gw") == tmp_path / "build" / "stage" / "gw"
    assert cfg.path("/abs/x") == Path("/abs/x")
