"""Pure parts of edgeci.composer.cloud: blueprint conversion, request body, configuration errors."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from edgeci.composer.base import ComposeRequest
from edgeci.composer.cloud import CloudComposer, _render_logs, blueprint_to_cloud
from edgeci.config import load_config
from edgeci.errors import ConfigError

TOML = """name = "gw"
version = "2.0.0"
architecture = "x86_64"

[[packages]]
name = "podman"
version = "*"
[[groups]]
name = "core"

[customizations]
hostname = "gw"
fips = true
[customizations.kernel]
append = "quiet"
[[customizations.user]]
name = "core"
expiredate = 12345
[customizations.services]
enabled = ["sshd"]
disabled = []
[customizations.dnf]
config = "x"
"""


def test_blueprint_is_converted_and_unknown_keys_are_named() -> None:
    bp, warnings = blueprint_to_cloud(tomllib.loads(TOML))
    assert bp == {"name": "gw", "version": "2.0.0", "packages": [{"name": "podman", "version": "*"}],
                  "groups": [{"name": "core"}],
                  "customizations": {"hostname": "gw", "fips": True, "kernel": {"append": "quiet"},
                                     "user": [{"name": "core"}], "services": {"enabled": ["sshd"]}}}
    assert sorted(warnings) == sorted([
        "blueprint key 'architecture' is not in the Cloud API's blueprint: dropped",
        "blueprint key 'customizations.user[0].expiredate' is not in the Cloud API's blueprint: dropped",
        "blueprint key 'customizations.dnf' is not in the Cloud API's blueprint: dropped",
    ])


def cloud(tmp_path: Path, **over: str) -> CloudComposer:
    return CloudComposer(load_config(env={}, root=tmp_path, overrides={"composer.url": "https://composer.example",
                                                                        **over}))


def request(**kw: str) -> ComposeRequest:
    return ComposeRequest("gw", TOML, image_type=kw.pop("image_type", "edge-commit"), ref="fedora/x86_64/iot", **kw)


def test_request_body_maps_fedora_to_iot_types_and_carries_ostree_options(tmp_path: Path) -> None:
    c = cloud(tmp_path, **{"composer.repositories": "https://repo/a", "composer.rhsm": "true"})
    assert c.base == "https://composer.example/api/image-builder-composer/v2"
    body = c.compose_body(request(distro="fedora-39", parent="c" * 64))
    ir = body["image_request"]
    assert body["distribution"] == "fedora-39" and ir["image_type"] == "iot-commit"
    assert ir["repositories"] == [{"baseurl": "https://repo/a", "rhsm": True}]
    assert ir["ostree"] == {"ref": "fedora/x86_64/iot", "parent": "c" * 64, "rhsm": True}
    assert body["blueprint"]["name"] == "gw" and "size" not in ir


def test_missing_repositories_and_unmapped_types_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"composer\.repositories is empty"):
        cloud(tmp_path).compose_body(request())
    with pytest.raises(ConfigError, match="no Cloud API equivalent"):
        cloud(tmp_path, **{"composer.repositories": "https://r"}).compose_body(request(image_type="vhd"))


def test_token_settings_must_come_together(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGECI_COMPOSER_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="EDGECI_COMPOSER_TOKEN is empty"):
        cloud(tmp_path, **{"composer.token_url": "https://sso.example/token"})
    monkeypatch.setenv("EDGECI_COMPOSER_TOKEN", "offline-abc-123")
    with pytest.raises(ConfigError, match=r"composer\.token_url is empty"):
        cloud(tmp_path)


def test_logs_render_stage_results_and_job_errors() -> None:
    text = _render_logs({"image_builds": [{"osbuild_output": {"log": {"os": [
        {"type": "org.osbuild.rpm", "success": False, "output": "no kernel-rt"}]}},
        "job_error": {"id": 10, "reason": "osbuild build failed", "details": ["x"]}}]})
    assert "-- os: org.osbuild.rpm FAILED\nno kernel-rt" in text
    assert "job error 10: osbuild build failed" in text
