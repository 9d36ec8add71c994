"""edgeci.checks: the strict checks.yaml parser, the greenboot script renderer, in-tree evaluation."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from edgeci.checks import (
    ChecksError,
    evaluate_in_tree,
    load_checks,
    parse_checks,
    render_scripts,
    resolve_in_tree,
)
from edgeci.errors import BlueprintError
from edgeci.tools.run import have, run

EXAMPLE = """\
checks:                      # declarative
  - name: hostname
    file_contains: {path: /etc/hostname, text: gateway}
  - name: motd-present
    file_exists: /etc/motd
  - name: core-user
    user_exists: core
  - name: wheel-group
    group_exists: wheel
  - name: sshd-enabled
    service_enabled: sshd.service
  - name: version
    os_release_version: true
  - name: booted-candidate
    booted_commit: true
  - name: uname
    command: {run: "uname -s", exit: 0, output: Linux}
    wanted: false
  - name: optional
    service_enabled: chronyd
    wanted: true
scripts:
  - name: disk-space
    required: true
    run: |
      #!/bin/sh
      df / | tail -1
  - name: no-shebang
    required: false
    run: echo hi
"""


def _error(text: str) -> ChecksError:
    with pytest.raises(ChecksError) as e:
        parse_checks(text, "bp.checks.yaml")
    assert isinstance(e.value, BlueprintError) and e.value.exit_code == 2
    return e.value


# -- parsing ----------------------------------------------------------------------------------------

def test_the_contract_example_parses() -> None:
    cf = parse_checks(EXAMPLE, "bp.checks.yaml")
    kinds = {c.name: c.kind for c in cf.checks}
    assert kinds == {"hostname": "file_contains", "motd-present": "file_exists", "core-user": "user_exists",
                     "wheel-group": "group_exists", "sshd-enabled": "service_enabled",
                     "version": "os_release_version", "booted-candidate": "booted_commit", "uname": "command",
                     "optional": "service_enabled", "disk-space": "script", "no-shebang": "script"}
    hostname = cf.by_name("hostname")
    assert hostname.args == {"path": "/etc/hostname", "text": "gateway"} and hostname.line == 3
    assert cf.by_name("uname").args == {"run": "uname -s", "exit": 0, "output": "Linux"}
    assert cf.by_name("uname").required and not cf.by_name("optional").required
    assert cf.by_name("optional").args == "chronyd.service"  # a unit name without suffix is a service
    assert not cf.by_name("no-shebang").required
    assert {c.name for c in cf.checks if c.needs_running} == {"booted-candidate", "uname", "disk-space",
                                                              "no-shebang"}


def test_load_checks_reads_a_file(tmp_path: Path) -> None:
    p = tmp_path / "x.checks.yaml"
    p.write_text(EXAMPLE)
    cf = load_checks(p)
    assert cf.path == p and len(cf.checks) == 11


@pytest.mark.parametrize("text", ["", "# only a comment\n", "checks:\n", "checks: []\nscripts: []\n"])
def test_empty_files_have_no_checks(text: str) -> None:
    assert parse_checks(text).checks == []


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ChecksError, match="checks file not found"):
        load_checks(tmp_path / "nope.checks.yaml")


def test_unknown_check_key_names_line_and_suggests() -> None:
    e = _error("checks:\n  - name: motd\n    file_exist: /etc/motd\n")
    assert e.where == "bp.checks.yaml:3"
    assert "unknown key 'file_exist'" in e.message and "did you mean 'file_exists'" in str(e).lower()


def test_unknown_top_level_key() -> None:
    e = _error("checks: []\nscirpts: []\n")
    assert _error("checks: []\nhealth: []\n").fix == "allowed keys: checks, scripts"
    assert e.where == "bp.checks.yaml:2" and "did you mean 'scripts'" in str(e).lower()


def test_unknown_sub_key() -> None:
    e = _error("checks:\n  - name: h\n    file_contains:\n      path: /etc/hostname\n      txt: x\n")
    assert e.where == "bp.checks.yaml:5" and "did you mean 'text'" in str(e).lower()


def test_unknown_script_key() -> None:
    e = _error("scripts:\n  - name: s\n    run: exit 0\n    wanted: true\n")
    assert e.where == "bp.checks.yaml:4"
    assert "unknown key 'wanted' in scripts[0]" in e.message and "required: false instead of wanted" in str(e)


@pytest.mark.parametrize("text, message", [
    ("checks:\n  - name: a\n", "no kind keys"),
    ("checks:\n  - name: a\n    file_exists: /x\n    user_exists: core\n", "2 kind keys"),
    ("checks:\n  - file_exists: /x\n", "has no 'name'"),
    ("checks:\n  - name: a b\n    file_exists: /x\n", "is not allowed"),
    ("checks:\n  - name: a\n    file_exists: /x\n  - name: a\n    user_exists: core\n", "duplicate check name 'a'"),
    ("checks:\n  - name: a\n    file_exists: /x\nscripts:\n  - name: a\n    run: exit 0\n", "duplicate check name"),
    ("checks:\n  - name: a\n    file_exists: etc/motd\n", "must be an absolute path"),
    ("checks:\n  - name: a\n    os_release_version: false\n", "must be true"),
    ("checks:\n  - name: a\n    booted_commit: yes please\n", "must be true or false"),
    ("checks:\n  - name: a\n    file_contains: {path: /x}\n", "has no 'text'"),
    ("checks:\n  - name: a\n    command: {exit: 0}\n", "has no 'run'"),
    ("checks:\n  - name: a\n    command: {run: x, exit: 300}\n", "must be 0..255"),
    ("checks:\n  - name: a\n    command: {run: x, exit: zero}\n", "must be an integer"),
    ("checks:\n  - name: a\n    user_exists: [core]\n", "must be a string"),
    ("checks:\n  - name: a\n    user_exists: 'a:b'\n", "not a valid name"),
    ("checks:\n  - name: a\n    service_enabled: /etc/x.service\n", "must be a unit name"),
    ("checks:\n  - name: a\n    file_exists: /x\n    wanted: maybe\n", "must be true or false"),
    ("checks:\n  - name: a\n    file_exists: /x\n    name: b\n", "duplicate key 'name'"),
    ("checks: {name: a}\n", "must be a list"),
    ("- name: a\n", "must be a mapping"),
    ("scripts:\n  - name: s\n", "has no 'run'"),
    ("scripts:\n  - name: s\n    run: ''\n", "must not be empty"),
])
def test_invalid_checks(text: str, message: str) -> None:
    e = _error(text)
    assert message in e.message, e.message
    assert e.where and e.where.startswith("bp.checks.yaml:")


def test_yaml_syntax_error_has_a_line() -> None:
    e = _error("checks:\n  - name: a\n    file_exists: [/x\n")
    assert e.message.startswith("invalid YAML") and e.where and e.where.startswith("bp.checks.yaml:")


def test_too_many_checks() -> None:
    text = "checks:\n" + "".join(f"  - name: c{i}\n    file_exists: /x\n" for i in range(99))
    assert "at most 98" in _error(text).message


# -- rendering ----------------------------------------------------------------------------------------

def test_render_names_and_directories() -> None:
    scripts = render_scripts(parse_checks(EXAMPLE), "1.2.3")
    assert sorted(scripts) == [
        "required.d/01-hostname.sh", "required.d/02-motd-present.sh", "required.d/03-core-user.sh",
        "required.d/04-wheel-group.sh", "required.d/05-sshd-enabled.sh", "required.d/06-version.sh",
        "required.d/08-uname.sh", "required.d/10-disk-space.sh",
        "wanted.d/09-optional.sh", "wanted.d/11-no-shebang.sh",
    ]  # booted_commit (07) is evaluated on the host from EDGECI-BOOT
    assert scripts["required.d/10-disk-space.sh"] == "#!/bin/sh\ndf / | tail -1\n"  # copied as it is
    assert scripts["wanted.d/11-no-shebang.sh"] == "#!/bin/sh\necho hi\n"
    assert all(text.startswith("#!") for text in scripts.values())
    assert "'1.2.3'" in scripts["required.d/06-version.sh"] or "1.2.3" in scripts["required.d/06-version.sh"]


def _sh(script: str, tmp_path: Path) -> tuple[int, str]:
    p = tmp_path / "check.sh"
    p.write_text(script)
    r = run(["busybox", "sh", p], check=False)
    return r.returncode, r.stdout + r.stderr


@pytest.mark.skipif(not have("busybox"), reason="busybox-static is not installed")
def test_rendered_scripts_pass_and_fail_under_busybox_sh(tmp_path: Path) -> None:
    target = tmp_path / "file with space"
    target.write_text("line one\nquote ' and \"double\" $HOME `x`\n\n")
    text = "quote ' and \"double\" $HOME `x`\n\n"
    q = json.dumps
    cf = parse_checks(
        "checks:\n"
        f"  - name: has\n    file_contains: {{path: {q(str(target))}, text: {q(text)}}}\n"
        f"  - name: exists\n    file_exists: {q(str(target))}\n"
        f"  - name: missing\n    file_exists: {q(str(tmp_path / 'nope'))}\n"
        f"  - name: lacks\n    file_contains: {{path: {q(str(target))}, text: absent}}\n"
        "  - name: cmd-ok\n    command: {run: 'echo Linux; exit 3', exit: 3, output: Linux}\n"
        "  - name: cmd-exit\n    command: {run: 'echo Linux', exit: 1}\n"
        "  - name: cmd-output\n    command: {run: 'echo BSD', output: Linux}\n")
    scripts = {k.split("-", 1)[1][:-3]: v for k, v in render_scripts(cf, "1.0").items()}
    results = {name: _sh(text_, tmp_path)[0] == 0 for name, text_ in scripts.items()}
    assert results == {"has": True, "exists": True, "missing": False, "lacks": False, "cmd-ok": True,
                       "cmd-exit": False, "cmd-output": False}
    _, out = _sh(scripts["cmd-exit"], tmp_path)
    assert "exit status 0, expected 1" in out


# -- evaluation against a tree ---------------------------------------------------------------------------

def _tree(root: Path, *, deployed: bool) -> Path:
    etc = root / ("etc" if deployed else "usr/etc")
    (root / "usr" / "lib").mkdir(parents=True)
    (root / "usr" / "lib" / "os-release").write_text('NAME="x"\nVERSION="1.2.3"\n')
    etc.mkdir(parents=True)
    os.symlink("../lib/os-release" if not deployed else "../usr/lib/os-release", etc / "os-release")
    (etc / "hostname").write_text("gateway\n")
    (etc / "passwd").write_text("root:x:0:0::/root:/bin/sh\ncore:x:1000:1000::/var/home/core:/bin/sh\n")
    (etc / "group").write_text("root:x:0:\nwheel:x:10:core\n")
    wants = etc / "systemd" / "system" / "multi-user.target.wants"
    wants.mkdir(parents=True)
    os.symlink("/usr/lib/systemd/system/sshd.service", wants / "sshd.service")  # dangling is enabled
    os.symlink("/usr/lib/os-release", etc / "motd")  # absolute symlink: resolved inside the tree
    return root


@pytest.mark.parametrize("deployed", [True, False])
def test_evaluate_in_tree_pass(tmp_path: Path, deployed: bool) -> None:
    root = _tree(tmp_path / "t", deployed=deployed)
    cf = parse_checks(EXAMPLE)
    for name in ("hostname", "motd-present", "core-user", "wheel-group", "sshd-enabled", "version"):
        ok, output = evaluate_in_tree(cf.by_name(name), root, "1.2.3")
        assert ok, f"{name}: {output}"
    ok, output = evaluate_in_tree(cf.by_name("optional"), root, "1.2.3")
    assert not ok and output == "chronyd.service is not enabled"


def test_evaluate_in_tree_fail_messages(tmp_path: Path) -> None:
    root = _tree(tmp_path / "t", deployed=True)
    cf = parse_checks("checks:\n"
                      "  - name: h\n    file_contains: {path: /etc/hostname, text: kiosk}\n"
                      "  - name: u\n    user_exists: admin\n"
                      "  - name: g\n    group_exists: docker\n"
                      "  - name: f\n    file_exists: /etc/nope\n")
    assert evaluate_in_tree(cf.by_name("h"), root, "1") == (False, "/etc/hostname does not contain: kiosk")
    assert evaluate_in_tree(cf.by_name("u"), root, "1") == (False, "no user admin in /etc/passwd")
    assert evaluate_in_tree(cf.by_name("g"), root, "1") == (False, "no group docker in /etc/group")
    assert evaluate_in_tree(cf.by_name("f"), root, "1") == (False, "/etc/nope does not exist")
    version = parse_checks(EXAMPLE).by_name("version")
    assert evaluate_in_tree(version, root, "2.0.0") == (False, "version 1.2.3 (expected 2.0.0)")


def test_booted_commit(tmp_path: Path) -> None:
    c1, c2 = "a" * 64, "b" * 64
    deployment = tmp_path / "deploy" / f"{c1}.0"
    deployment.mkdir(parents=True)
    check = parse_checks(EXAMPLE).by_name("booted-candidate")
    assert evaluate_in_tree(check, deployment, "1", booted_commit=c1)[0]
    ok, output = evaluate_in_tree(check, deployment, "1", booted_commit=c2)
    assert not ok and f"expected {c1}" in output
    assert not evaluate_in_tree(check, deployment, "1")[0]
    assert evaluate_in_tree(check, tmp_path, "1", booted_commit=c2, expected_commit=c2)[0]


def test_running_checks_cannot_be_evaluated_in_a_tree(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs a running system"):
        evaluate_in_tree(parse_checks(EXAMPLE).by_name("uname"), tmp_path, "1")


def test_resolve_in_tree_stays_inside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "usr" / "lib").mkdir(parents=True)
    os.symlink("usr/lib", root / "lib")
    os.symlink("/../../../etc", root / "escape")
    assert resolve_in_tree(root, "/lib/x") == root / "usr" / "lib" / "x"
    assert resolve_in_tree(root, "/escape/passwd") == root / "etc" / "passwd"
    os.symlink("loop", root / "loop")
    with pytest.raises(OSError, match="too many levels"):
        resolve_in_tree(root, "/loop/x")
