"""Pure parts of edgeci.composer.weldr: header parsing, error rendering, blueprint comparison, transport choice."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from edgeci.composer.weldr import (
    WeldrComposer,
    _comparable,
    _errors_of,
    _first_difference,
    _normalize,
    _render_errors,
    filename_from_disposition,
    manifest_summary,
    prod_ref_tip,
)
from edgeci.config import load_config


@pytest.mark.parametrize(("header", "name"), [
    ("attachment; filename=4b9b-container.tar", "4b9b-container.tar"),
    ('attachment; filename="4b9b-commit.tar"', "4b9b-commit.tar"),
    ("attachment; filename=../../etc/cron.d/x", "x"),  # never a path: the base name only
    ("attachment; filename=.hidden", None),
    ("attachment; filename=a b", None),
    ("inline", None),
    ("", None),
])
def test_filename_from_disposition_is_a_safe_base_name(header: str, name: str | None) -> None:
    assert filename_from_disposition(header) == name


def test_errors_keep_id_and_msg() -> None:
    body = {"status": False, "errors": [{"id": "UnknownBlueprint", "msg": "Unknown blueprint name: x"}, "plain"]}
    errors = _errors_of(body)
    assert errors == [{"id": "UnknownBlueprint", "msg": "Unknown blueprint name: x"}, {"id": "", "msg": "plain"}]
    assert _render_errors(errors) == "UnknownBlueprint: Unknown blueprint name: x; plain"
    assert _errors_of(["not a dict"]) == [] and _render_errors([]) == "no error detail"


def test_stored_blueprint_with_server_defaults_equals_the_toml() -> None:
    toml = tomllib.loads('name = "gw"\nversion = "1.0.0"\n[[packages]]\nname = "b"\n[[packages]]\nname = "a"\n'
                         '[customizations]\nhostname = "gw"\n')
    stored = {"name": "gw", "description": "", "version": "1.0.0", "modules": [], "groups": [], "distro": "",
              "packages": [{"name": "a"}, {"name": "b"}], "customizations": {"hostname": "gw", "user": None}}
    assert _normalize(stored) == _normalize(toml)
    stored["distro"], toml["distro"] = "rhel-9.4", "rhel-94"  # the server standardizes distro names
    assert _first_difference(_comparable(stored), _comparable(toml)) == ""
    stored["customizations"]["hostname"] = "other"
    assert _first_difference(_comparable(stored), _comparable(toml)) == "customizations.hostname"


def test_manifest_summary_lists_pipelines_and_stages() -> None:
    manifest = {"pipelines": [{"name": "build", "stages": [{"type": "org.osbuild.rpm"}]},
                              {"name": "empty"}], "sources": {"org.osbuild.curl": {}}}
    assert manifest_summary(manifest) == ("pipeline build: org.osbuild.rpm\npipeline empty: (no stages)\n"
                                          "sources: org.osbuild.curl")
    assert manifest_summary({}) == ""


def test_production_ref_of_a_non_http_url_is_unknown() -> None:
    assert prod_ref_tip("/srv/prod/repo", "rhel/9/x86_64/edge") is None


def test_transport_url_or_socket(tmp_path: Path) -> None:
    tcp = WeldrComposer(load_config(env={}, root=tmp_path, overrides={"composer.url": "http://composer:8080/"}))
    assert tcp.base == "http://composer:8080" and tcp.where == "http://composer:8080"
    sock = WeldrComposer(load_config(env={}, root=tmp_path, overrides={
        "composer.url": "http://composer:8080", "composer.socket": "/tmp/x.socket"}))
    assert sock.base == "http+unix://composer" and sock.where == "/tmp/x.socket"  # --socket wins over a URL
    default = WeldrComposer(load_config(env={}, root=tmp_path))
    assert default.where == "/run/weldr/api.socket"
