"""The documented example configuration loads and means what its comments say."""

from pathlib import Path

from edgeci.config import load_config

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "edgeci.yaml"


def test_example_config_loads_with_no_environment() -> None:
    cfg = load_config(EXAMPLE, env={})
    assert cfg.composer.backend == "weldr"
    assert cfg.stage.mode == "wait" and cfg.stage.url.endswith("/repo")
    assert cfg.gate.source == "gitlab" and cfg.gate.approvals_required == 2
    assert cfg.ref("gateway") == "rhel/9/x86_64/edge/gateway"
    assert cfg.arches("kiosk") == ["x86_64", "aarch64"]


def test_environment_overrides_the_example_file() -> None:
    cfg = load_config(EXAMPLE, env={"EDGECI_COMPOSER_BACKEND": "cloud"})
    assert cfg.composer.backend == "cloud"
