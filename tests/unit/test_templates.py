"""Templated blueprints: ${NAME} placeholders declared in edgeci.yaml, linted with file:line, rendered safely."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from edgeci import templates
from edgeci.templates import MissingVariable, TemplateError, render_blueprint
from tests.fixtures.composed import edgeci_cli

SSH_KEY = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl admin@site")
TEMPLATE = '''name = "edge"
version = "1.0.0"

[[customizations.user]]
name = "${SSH_USER}"
key = "${ADMIN_SSH_KEY_CONTENTS}"

[[customizations.files]]
path = "/etc/ceph/keyring"
data = "${CEPH_KEYRING}"

[[customizations.files]]
path = "/usr/local/bin/hello"
data = "echo $${HOME}"
'''
VARS = "blueprints:\n  edge:\n    variables: [SSH_USER, ADMIN_SSH_KEY_CONTENTS, CEPH_KEYRING]\n"
GOOD = {"SSH_USER": "admin", "ADMIN_SSH_KEY_CONTENTS": SSH_KEY, "CEPH_KEYRING": "[client.a]\n\tkey = x\"y\\z\n"}


def _project(tmp_path: Path, toml: str = TEMPLATE, config: str = VARS) -> Path:
    (tmp_path / "blueprints").mkdir()
    (tmp_path / "blueprints/edge.toml").write_text(toml)
    (tmp_path / "edgeci.yaml").write_text(config)
    return tmp_path


def test_rendering_escapes_values_so_they_cannot_add_keys() -> None:
    data = tomllib.loads(TEMPLATE)
    evil = {**GOOD, "CEPH_KEYRING": 'x"\nmode = "0777'}
    r = render_blueprint(TEMPLATE, data, list(GOOD), evil, blueprint="edge", source="edge.toml",
                         template_sha256="t" * 64)
    got = tomllib.loads(r.text)
    assert got["customizations"]["files"][0] == {"path": "/etc/ceph/keyring", "data": 'x"\nmode = "0777'}
    assert got["customizations"]["files"][1]["data"] == "echo ${HOME}"  # $${…} is a literal ${…}
    assert r.text.count("\n") == TEMPLATE.count("\n")  # line numbers of the template still hold
    assert r.record() == {"template": True, "template_sha256": "t" * 64,
                          "variables": {n: templates.value_sha256(v) for n, v in sorted(evil.items())}}
    assert not any(v in str(r.record()) for v in evil.values())


def test_a_missing_variable_is_a_configuration_error_naming_it_and_where_ci_defines_it() -> None:
    with pytest.raises(MissingVariable) as e:
        render_blueprint(TEMPLATE, tomllib.loads(TEMPLATE), list(GOOD), {"SSH_USER": "a"}, blueprint="edge",
                         source="blueprints/edge.toml", template_sha256="")
    assert e.value.exit_code == 2 and "ADMIN_SSH_KEY_CONTENTS" in e.value.message
    assert "masked and protected GitLab CI/CD variable" in (e.value.fix or "")
    assert "withCredentials" in (e.value.fix or "")


def test_a_placeholder_in_a_literal_string_cannot_be_rendered() -> None:
    text = "name = \"edge\"\nversion = \"1.0.0\"\n[customizations]\nhostname = '${HOST}'\n"
    with pytest.raises(TemplateError) as e:
        render_blueprint(text, tomllib.loads(text), ["HOST"], {"HOST": "a'b"}, blueprint="edge",
                         source="edge.toml", template_sha256="")
    assert e.value.where == "edge.toml:4" and "double-quoted" in e.value.message


@pytest.mark.parametrize("edit,line,words", [
    (lambda t: t.replace("${CEPH_KEYRING}", "${CEPH_KEYRNG}"), 10, "${CEPH_KEYRNG} in customizations.files[0].data "
                                                                   "is not declared"),
    (lambda t: t.replace('version = "1.0.0"', 'version = "${SSH_USER}"'), 2, "version must be literal"),
    (lambda t: t.replace('name = "edge"', 'name = "${SSH_USER}"', 1), 1, "name must be literal"),
    (lambda t: t.replace('key = "${ADMIN_SSH_KEY_CONTENTS}"', "key = '${ADMIN_SSH_KEY_CONTENTS}'"), 6,
     "not inside a double-quoted string"),
])
def test_template_lint_errors_name_file_and_line(tmp_path: Path, edit: object, line: int, words: str) -> None:
    project = _project(tmp_path, edit(TEMPLATE))  # type: ignore[operator]
    r = edgeci_cli(["lint"], cwd=project)
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"blueprints/edge.toml:{line}: error: [template]" in r.stdout and words in r.stdout, r.stdout


@pytest.mark.parametrize("var,value,line,words", [
    ("ADMIN_SSH_KEY_CONTENTS", "not-a-key AAAA", 6, "is not an SSH public key"),
    ("ADMIN_SSH_KEY_CONTENTS", "ssh-ed25519 AAAAB3NzaC1yc2EAAAADAQABAAABAQ==", 6, "is not an SSH public key"),
    ("SSH_USER", "root; rm -rf /", 5, "is not a user name"),
])
def test_rendered_values_that_are_invalid_name_file_and_line_not_the_value(
        tmp_path: Path, var: str, value: str, line: int, words: str) -> None:
    project = _project(tmp_path)
    r = edgeci_cli(["lint"], cwd=project, env={**GOOD, var: value})
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"blueprints/edge.toml:{line}: error: [template]" in r.stdout and words in r.stdout, r.stdout
    assert value not in r.stdout + r.stderr
    r = edgeci_cli(["compose", "edge"], cwd=project, env={**GOOD, var: value})
    assert r.returncode == 2 and f"blueprints/edge.toml:{line}" in r.stderr and value not in r.stderr, r.stderr


def test_a_valid_template_lints_clean_with_and_without_its_values(tmp_path: Path) -> None:
    project = _project(tmp_path)
    assert edgeci_cli(["lint"], cwd=project).returncode == 0
    r = edgeci_cli(["lint"], cwd=project, env=GOOD)
    assert r.returncode == 0, r.stdout + r.stderr


def test_compose_without_a_declared_variable_exits_2_naming_it(tmp_path: Path) -> None:
    project = _project(tmp_path)
    env = {k: v for k, v in GOOD.items() if k != "CEPH_KEYRING"}
    r = edgeci_cli(["compose", "edge"], cwd=project, env=env)
    assert r.returncode == 2, r.stdout + r.stderr
    err = r.stderr.strip()
    assert "\n" not in err and "CEPH_KEYRING" in err and "blueprints/edge.toml" in err
    assert "GitLab CI/CD variable" in err


def test_checks_placeholders_must_be_declared(tmp_path: Path) -> None:
    project = _project(tmp_path)
    (project / "blueprints/edge.checks.yaml").write_text(
        "checks:\n  - name: admin\n    user_exists: ${SSH_USER}\n  - name: other\n    user_exists: ${NOPE}\n")
    r = edgeci_cli(["lint"], cwd=project)
    assert r.returncode == 1
    assert "blueprints/edge.checks.yaml:5: error: [checks]" in r.stdout and "${NOPE}" in r.stdout, r.stdout
