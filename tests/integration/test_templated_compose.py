"""A templated blueprint composed through the local and the Weldr backend with canary values: the image (or Image
Builder) gets the rendered values; no output, record, report or stored copy carries a value in any usual form."""

from __future__ import annotations

import base64
import json
import urllib.parse
from pathlib import Path

from edgeci.templates import value_sha256
from edgeci.tools import ostree
from tests.fixtures.composed import edgeci_cli
from tests.fixtures.weldr_server import WeldrServer

KEY = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl "
       "canary-key-comment-5d1e")
CANARIES = {
    "SSH_USER": "canaryadmin7",
    "ADMIN_SSH_KEY_CONTENTS": KEY,
    "CEPH_KEYRING": "[client.edge]\n\tkey = CANARY-Keyring/9f+3a==\n",
}
TEMPLATE = '''name = "gateway"
description = "templated gateway"
version = "1.0.1"

[customizations]
hostname = "gateway"

[[customizations.user]]
name = "${SSH_USER}"
key = "${ADMIN_SSH_KEY_CONTENTS}"

[[customizations.files]]
path = "/etc/ceph/keyring"
data = "${CEPH_KEYRING}"
'''
CONFIG = "blueprints:\n  gateway:\n    variables: [SSH_USER, ADMIN_SSH_KEY_CONTENTS, CEPH_KEYRING]\n"


def forms(value: str) -> list[str]:
    out = {value, base64.b64encode(value.encode()).decode(), urllib.parse.quote(value, safe=""),
           urllib.parse.quote_plus(value), json.dumps(value)[1:-1]}
    out |= {line.strip() for line in value.splitlines() if len(line.strip()) >= 8}
    return sorted(out)


def project(tmp_path: Path) -> Path:
    (tmp_path / "blueprints").mkdir()
    (tmp_path / "blueprints/gateway.toml").write_text(TEMPLATE)
    (tmp_path / "edgeci.yaml").write_text(CONFIG)
    return tmp_path


def leaks(root: Path, texts: list[str]) -> list[str]:
    """Every (file or output, canary form) where a value shows up, outside ostree repositories and image archives
    (the image is meant to hold the values)."""
    found = []
    haystacks = {f"output {i}": t for i, t in enumerate(texts)}
    for f in root.rglob("*"):
        if not f.is_file() or f.suffix == ".tar" or "repo" in f.relative_to(root).parts:
            continue
        haystacks[str(f.relative_to(root))] = f.read_bytes().decode("utf-8", "replace")
    for where, text in haystacks.items():
        for name, value in CANARIES.items():
            for form in forms(value):
                if form in text:
                    found.append(f"{where}: {name} as {form!r}")
    return found


def check_record(proj: Path) -> None:
    bp = json.loads((proj / "build/gateway/x86_64/record.json").read_text())["sections"]["blueprint"]
    assert bp["template"] is True
    assert bp["variables"] == {n: value_sha256(v) for n, v in sorted(CANARIES.items())}
    assert bp["template_sha256"] == bp["sha256"]


def test_local_compose_renders_into_the_tree_and_nowhere_else(tmp_path: Path, kernel_cache: object) -> None:
    proj = project(tmp_path)
    r = edgeci_cli(["compose", "gateway"], cwd=proj, env=CANARIES)
    assert r.returncode == 0, r.stdout + r.stderr
    check_record(proj)
    compose = json.loads((proj / "build/gateway/x86_64/record.json").read_text())["sections"]["compose"]
    repo = proj / "build/composer/repo"
    keyring = ostree.cat(repo, compose["commit"], "/usr/etc/ceph/keyring").decode()
    assert keyring == CANARIES["CEPH_KEYRING"]
    passwd = ostree.cat(repo, compose["commit"], "/usr/etc/passwd").decode()
    assert "\ncanaryadmin7:" in "\n" + passwd
    assert leaks(proj, [r.stdout, r.stderr]) == []


def test_weldr_compose_pushes_the_rendered_blueprint_and_records_only_hashes(
        tmp_path: Path, weldr_server: WeldrServer) -> None:
    proj = project(tmp_path)
    cli = ["compose", "gateway", "--backend", "weldr", "--socket", str(weldr_server.socket_path),
           "--set", "composer.poll_interval=0.01", "--set", "composer.poll_max_interval=0.05"]
    r = edgeci_cli(cli, cwd=proj, env=CANARIES)
    assert r.returncode == 0, r.stdout + r.stderr
    stored = weldr_server.blueprints["gateway"]
    assert stored["customizations"]["user"][0] == {"name": "canaryadmin7", "key": KEY}
    assert stored["customizations"]["files"][0]["data"] == CANARIES["CEPH_KEYRING"]
    check_record(proj)
    junit = (proj / "reports/compose-gateway-x86_64.xml").read_text()
    assert f"variable CEPH_KEYRING sha256 {value_sha256(CANARIES['CEPH_KEYRING'])}" in junit
    assert leaks(proj, [r.stdout, r.stderr]) == []
