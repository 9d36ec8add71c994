"""Blueprint loading and lint: every rule has a failing and a passing case; fuzzing never crashes lint."""

from __future__ import annotations

import atexit
import itertools
import json
import re
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from edgeci.blueprint import (
    BLUEPRINT_SCHEMA,
    CUSTOMIZATIONS,
    RULES,
    Finding,
    ListOf,
    Table,
    dotted,
    is_crypt_hash,
    key_lines,
    lint_blueprint,
    lint_file,
    load,
)
from edgeci.config import BlueprintConfig, Config
from edgeci.errors import BlueprintError, EdgeCIError
from edgeci.version import compare_versions, next_patch, parse_semver

REPO = Path(__file__).resolve().parents[2]
SHA512 = ("$6$nHS1t8RyHVcG3XS5$0XlAWoEtXTGjHMqKxSd2QgmvNmjIsgAjplCg922BwFRgnimg1gkNkRMGEIX4."
          "z1oxc8RipgTfi41.yA7Zbs7C1")
YESCRYPT = "$y$j9T$F5Jx5fExrKuPp53xLKQ..1$X3DX6M94c7o.9agCG9G317fhZg9SqC.5i5rd.RhAtQ7"
SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIzV8LzJ7ejKF7hpsqdKVNel5mHJkmAEpO9QLoOK53kH core@gateway"

GOOD = f'''name = "gw"
description = "test"
version = "1.0.0"

[[packages]]
name = "vim-enhanced"
version = "*"

[[packages]]
name = "tmux"

[customizations]
hostname = "gw"

[[customizations.user]]
name = "core"
password = "{SHA512}"
key = "{SSH_KEY}"
groups = ["wheel"]
uid = 1000
'''


def cfg_for(image_type: str = "edge-container", **lint: object) -> Config:
    cfg = Config()
    cfg.project.image_type = image_type
    for k, v in lint.items():
        setattr(cfg.lint, k, v)
    return cfg


@pytest.fixture
def lint(tmp_path: Path):
    def run(text: str | bytes, cfg: Config | None = None, name: str = "gw", **kw: object) -> list[Finding]:
        p = tmp_path / f"{name}.toml"
        if isinstance(text, bytes):
            p.write_bytes(text)
        else:
            p.write_text(text, encoding="utf-8")
        return lint_file(p, cfg or cfg_for(), **kw).findings

    return run


def rules(findings: list[Finding], severity: str | None = None) -> set[str]:
    return {f.rule for f in findings if severity is None or f.severity == severity}


def only(findings: list[Finding], rule: str) -> list[Finding]:
    return [f for f in findings if f.rule == rule]


def line_of(text: str, needle: str) -> int:
    for i, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return i
    raise AssertionError(needle)


# -- load ------------------------------------------------------------------------------------------


def test_load_reads_name_version_and_sha(tmp_path: Path) -> None:
    p = tmp_path / "gw.toml"
    p.write_text(GOOD)
    bp = load(p)
    assert (bp.name, bp.version) == ("gw", "1.0.0")
    assert len(bp.sha256) == 64
    assert bp.checks_path == tmp_path / "gw.checks.yaml"
    assert bp.customizations["hostname"] == "gw"


def test_load_missing_file_is_blueprint_error(tmp_path: Path) -> None:
    with pytest.raises(BlueprintError, match="not found"):
        load(tmp_path / "nope.toml")


def test_load_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    p = tmp_path / "gw.toml"
    p.write_text('name = "gw"\nversion = \n')
    with pytest.raises(BlueprintError) as e:
        load(p)
    assert e.value.where == f"{p}:2"


# -- the good case -------------------------------------------------------------------------------


def test_good_blueprint_has_no_findings(lint) -> None:
    assert lint(GOOD) == []


@pytest.mark.parametrize("name", ["gateway", "kiosk"])
def test_shipped_blueprints_lint_clean(name: str) -> None:
    r = lint_file(REPO / "blueprints" / f"{name}.toml", Config())
    assert r.findings == [], [f.line() for f in r.findings]
    assert r.blueprint is not None and r.blueprint.name == name


@pytest.mark.parametrize("name", ["gateway", "kiosk"])
def test_shipped_checks_files_follow_the_format(name: str) -> None:
    # The checks.yaml format (docs/testos.md): each check has a name and exactly one kind key.
    kinds = {"file_contains", "file_exists", "user_exists", "group_exists", "service_enabled",
             "os_release_version", "booted_commit", "command"}
    doc = yaml.safe_load((REPO / "blueprints" / f"{name}.checks.yaml").read_text())
    assert set(doc) <= {"checks", "scripts"}
    names = []
    for check in doc["checks"]:
        assert set(check) - {"name", "wanted"} <= kinds
        assert len(set(check) & kinds) == 1, check
        names.append(check["name"])
    for script in doc.get("scripts", []):
        assert set(script) <= {"name", "required", "run"} and script["run"].startswith("#!")
        names.append(script["name"])
    assert len(names) == len(set(names))


def test_rule_table_is_complete() -> None:
    assert next(iter(RULES)) == "syntax"
    assert {"unknown-key", "type", "name", "version", "duplicate-package", "image-type", "installation-device",
            "plaintext-password", "version-bump", "production-version"} <= set(RULES)


# -- syntax ----------------------------------------------------------------------------------------


def test_syntax_error_is_a_finding_with_line(lint, tmp_path: Path) -> None:
    findings = lint('name = "gw"\nversion = "1.0.0"\n[customizations\nhostname = "x"\n')
    assert len(findings) == 1 and findings[0].rule == "syntax" and findings[0].severity == "error"
    assert findings[0].where == f"{tmp_path / 'gw.toml'}:3"


def test_not_utf8_is_a_syntax_finding_with_line(lint, tmp_path: Path) -> None:
    findings = lint(b'name = "gw"\nversion = "1.0.0"\ndescription = "caf\xe9"\n')
    assert [(f.rule, f.where) for f in findings] == [("syntax", f"{tmp_path / 'gw.toml'}:3")]


def test_duplicate_key_is_a_syntax_finding(lint) -> None:
    findings = lint('name = "gw"\nname = "gw2"\nversion = "1.0.0"\n')
    assert rules(findings) == {"syntax"} and findings[0].lineno == 2


def test_absurd_nesting_is_a_syntax_finding_not_a_crash(lint) -> None:
    (f,) = lint('name = "gw"\nversion = "1.0.0"\nx = ' + "[" * 3000 + "]" * 3000 + "\n")
    assert f.rule == "syntax" and "nested too deeply" in f.message and f.lineno == 1


def test_syntax_passes_on_valid_toml(lint) -> None:
    assert "syntax" not in rules(lint(GOOD))


# -- unknown keys ----------------------------------------------------------------------------------


def test_unknown_top_level_key_with_did_you_mean_and_line(lint) -> None:
    text = GOOD.replace('description = "test"', 'descripton = "test"')
    (f,) = lint(text)
    assert f.rule == "unknown-key" and f.severity == "error"
    assert "descripton" in f.message and "did you mean 'description'" in f.message
    assert f.lineno == 2 and f.key == "descripton"


def test_unknown_nested_key_in_array_of_tables(lint) -> None:
    text = GOOD.replace("uid = 1000", "uid = 1000\npasswrd = \"x\"")
    (f,) = lint(text)
    assert f.rule == "unknown-key" and f.key == "customizations.user[0].passwrd"
    assert "did you mean 'password'" in f.message
    assert f.lineno == line_of(text, "passwrd")


def test_unknown_key_in_second_package_points_at_its_line(lint) -> None:
    text = GOOD.replace('name = "tmux"', 'name = "tmux"\nverison = "3"')
    (f,) = lint(text)
    assert f.key == "packages[1].verison" and f.lineno == line_of(text, "verison")


def test_customization_at_top_level_says_where_it_belongs(lint) -> None:
    text = GOOD.replace('version = "1.0.0"', 'version = "1.0.0"\nhostname = "gw"')
    (f,) = lint(text)
    assert f.rule == "unknown-key" and "[customizations]" in f.message


def test_unknown_customization_and_deep_keys(lint) -> None:
    text = GOOD + '\n[customizations.firewall.services]\nenabeld = ["ssh"]\n\n[customizations.foo]\nbar = 1\n'
    found = only(lint(text), "unknown-key")
    assert [f.key for f in found] == ["customizations.firewall.services.enabeld", "customizations.foo"]
    assert "did you mean 'enabled'" in found[0].message
    assert found[1].lineno == line_of(text, "[customizations.foo]")


def test_known_keys_from_the_reference_pass(lint) -> None:
    text = GOOD + '''
[[containers]]
source = "quay.io/fedora/fedora:latest"
tls-verify = true

[customizations.kernel]
name = "kernel-rt"

[customizations.services]
enabled = ["sshd"]
disabled = ["cups"]
masked = ["bluetooth"]

[customizations.firewall]
ports = ["22:tcp"]
[customizations.firewall.services]
enabled = ["ssh"]
disabled = ["telnet"]

[[customizations.firewall.zones]]
name = "trusted"
sources = ["192.168.100.0/24"]

[customizations.timezone]
timezone = "UTC"
ntpservers = ["pool.ntp.org"]

[customizations.locale]
languages = ["en_US.UTF-8"]
keyboard = "us"

[[customizations.directories]]
path = "/etc/app"
mode = "0755"
user = 0
group = "root"
ensure_parents = true

[[customizations.files]]
path = "/etc/app/conf"
mode = "644"
user = "root"
group = 0
data = "x = 1\\n"

[[customizations.sshkey]]
user = "root"
key = "ssh-ed25519 AAAA root"

[[customizations.group]]
name = "app"
gid = 1100

[[customizations.repositories]]
id = "extras"
baseurls = ["https://example.com/repo"]
gpgcheck = false

[customizations.rhsm.config.dnf_plugins.product_id]
enabled = false
'''
    assert lint(text) == []


# -- types -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "key", "words"),
    [
        ('name = "gw"', "name = 5", "name", "must be a string"),
        ("uid = 1000", 'uid = "1000"', "customizations.user[0].uid", "must be an integer"),
        ("uid = 1000", "uid = true", "customizations.user[0].uid", "must be an integer"),
        ('groups = ["wheel"]', 'groups = "wheel"', "customizations.user[0].groups", "must be a list of strings"),
        ('groups = ["wheel"]', "groups = [1]", "customizations.user[0].groups[0]", "must be a string"),
        ('hostname = "gw"', "hostname = [\"gw\"]", "customizations.hostname", "must be a string"),
        ('hostname = "gw"', 'hostname = "gw"\nfips = "yes"', "customizations.fips", "must be true or false"),
        ('hostname = "gw"', 'hostname = "gw"\nkernel = "rt"', "customizations.kernel", "must be a table"),
    ],
)
def test_wrong_types_are_findings(lint, old: str, new: str, key: str, words: str) -> None:
    text = GOOD.replace(old, new, 1)
    assert text != GOOD
    found = only(lint(text), "type")
    assert [f.key for f in found] == [key], [f.line() for f in found]
    assert words in found[0].message and found[0].severity == "error"


def test_single_table_where_an_array_of_tables_belongs(lint) -> None:
    text = GOOD.replace("[[customizations.user]]", "[customizations.user]")
    (f,) = lint(text)
    assert f.rule == "type" and "[[customizations.user]]" in f.message
    assert f.lineno == line_of(text, "[customizations.user]")


def test_missing_required_nested_key(lint) -> None:
    text = GOOD + '\n[[packages]]\nversion = "1.2"\n'
    (f,) = lint(text)
    assert f.rule == "type" and "required key 'name'" in f.message and f.key == "packages[2]"
    assert f.lineno == len(text.splitlines()) - 1


def test_file_paths_must_be_absolute_and_modes_octal(lint) -> None:
    text = GOOD + '\n[[customizations.files]]\npath = "etc/x"\nmode = "rw-r--r--"\n'
    found = only(lint(text), "type")
    assert {f.key for f in found} == {"customizations.files[0].path", "customizations.files[0].mode"}
    ok = GOOD + '\n[[customizations.files]]\npath = "/etc/x"\nmode = "0640"\n'
    assert lint(ok) == []


def test_types_pass_for_string_or_integer_owners(lint) -> None:
    text = GOOD + '\n[[customizations.files]]\npath = "/etc/x"\nuser = 1000\ngroup = "wheel"\n'
    assert lint(text) == []


# -- name ------------------------------------------------------------------------------------------


def test_missing_name(lint) -> None:
    (f,) = lint(GOOD.replace('name = "gw"\n', "", 1))
    assert f.rule == "name" and "no 'name'" in f.message and f.lineno == 1


@pytest.mark.parametrize("bad", ["my gateway", "gw/1", "", "gät"])
def test_name_must_match_the_pattern(lint, bad: str) -> None:
    (f,) = only(lint(GOOD.replace('name = "gw"', f'name = "{bad}"', 1)), "name")
    assert f.severity == "error" and f.lineno == 1


@pytest.mark.parametrize("good", ["gw", "edge-gw_2.x"])
def test_name_pattern_passes(lint, good: str) -> None:
    assert lint(GOOD.replace('name = "gw"', f'name = "{good}"', 1), name=good) == []


def test_name_differing_from_file_name_is_a_warning(lint) -> None:
    (f,) = lint(GOOD, name="other")
    assert (f.rule, f.severity) == ("name", "warning") and "other.toml" in f.message


# -- version ---------------------------------------------------------------------------------------


def test_missing_version(lint) -> None:
    (f,) = lint(GOOD.replace('version = "1.0.0"\n', ""))
    assert f.rule == "version" and "no 'version'" in f.message


@pytest.mark.parametrize("bad", ["1.0", "v1.0.0", "01.0.0", "1.0.0-", "1.0.0+", "latest", "1.0.0.0"])
def test_version_must_be_semver(lint, bad: str) -> None:
    (f,) = lint(GOOD.replace('version = "1.0.0"', f'version = "{bad}"'))
    assert f.rule == "version" and f.lineno == 3


@pytest.mark.parametrize("good", ["0.0.1", "1.2.3-rc.1", "10.20.30+build.5", "1.0.0-alpha-a.b-c"])
def test_version_semver_passes(lint, good: str) -> None:
    assert lint(GOOD.replace('version = "1.0.0"', f'version = "{good}"')) == []


def test_semver_precedence() -> None:
    ordered = ["1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta", "1.0.0-beta.2",
               "1.0.0-beta.11", "1.0.0-rc.1", "1.0.0", "1.0.1", "1.1.0", "2.0.0"]
    for a, b in itertools.pairwise(ordered):
        assert compare_versions(a, b) == -1 and compare_versions(b, a) == 1
    assert compare_versions("1.0.0+a", "1.0.0+b") == 0
    assert parse_semver("1.2") is None
    with pytest.raises(ValueError):
        compare_versions("1.0", "1.0.0")
    assert next_patch("1.4.9") == "1.4.10"


# -- duplicate packages ----------------------------------------------------------------------------


def test_duplicate_package(lint) -> None:
    text = GOOD + '\n[[packages]]\nname = "tmux"\n'
    (f,) = lint(text)
    assert f.rule == "duplicate-package" and "'tmux'" in f.message
    first = line_of(text, 'name = "tmux"')
    assert f.lineno == len(text.splitlines()) and f"line {first}" in f.message


def test_duplicate_across_packages_and_modules_and_groups(lint) -> None:
    text = GOOD + '\n[[modules]]\nname = "vim-enhanced"\n\n[[groups]]\nname = "core"\n\n[[groups]]\nname = "core"\n'
    found = only(lint(text), "duplicate-package")
    assert len(found) == 2 and {"'vim-enhanced'", "'core'"} == {re.search(r"'[^']+'", f.message)[0] for f in found}


def test_distinct_packages_pass(lint) -> None:
    text = GOOD + '\n[[modules]]\nname = "nodejs"\n\n[[groups]]\nname = "tmux"\n'
    assert lint(text) == []


# -- image type ------------------------------------------------------------------------------------


def test_installer_rejects_packages_and_unsupported_customizations(lint) -> None:
    found = lint(GOOD, cfg_for("edge-installer"))
    assert rules(found) == {"image-type"}
    assert {f.key for f in found} == {"packages", "customizations.hostname"}
    assert all("edge-installer" in f.message for f in found)


def test_commit_accepts_kernel_name_but_not_append(lint) -> None:
    text = GOOD + '\n[customizations.kernel]\nname = "kernel-rt"\nappend = "quiet"\n'
    (f,) = lint(text, cfg_for("edge-commit"))
    assert f.rule == "image-type" and f.key == "customizations.kernel.append"
    assert f.lineno == line_of(text, "append")


def test_raw_image_accepts_kernel_append_but_not_name(lint) -> None:
    text = ('name = "gw"\nversion = "1.0.0"\n[customizations.kernel]\nappend = "quiet"\n')
    assert lint(text, cfg_for("edge-raw-image")) == []
    (f,) = lint(text.replace("append", "name"), cfg_for("edge-raw-image"))
    assert f.key == "customizations.kernel.name"


def test_per_blueprint_image_type_from_config(lint) -> None:
    cfg = cfg_for("edge-container")
    cfg.blueprints["gw"] = BlueprintConfig(image_type="edge-installer")
    assert rules(lint(GOOD, cfg)) == {"image-type"}
    # another blueprint keeps the project's image type (only the name/file-name warning remains)
    assert rules(lint(GOOD.replace('"gw"', '"gw2"'), cfg, name="gw2")) == set()


def test_empty_values_are_not_options(lint) -> None:
    text = 'name = "gw"\nversion = "1.0.0"\npackages = []\n[customizations]\nhostname = ""\n'
    assert lint(text, cfg_for("edge-installer")) == []


def test_options_no_edge_type_accepts(lint) -> None:
    text = GOOD + '\n[customizations.openscap]\nprofile_id = "cis"\n'
    (f,) = lint(text)
    assert f.rule == "image-type" and f.key == "customizations.openscap"


def test_simplified_installer_accepts_its_options(lint) -> None:
    text = ('name = "gw"\nversion = "1.0.0"\n[customizations]\ninstallation_device = "/dev/vda"\n'
            '[customizations.fdo]\nmanufacturing_server_url = "http://fdo:8080"\ndiun_pub_key_insecure = "true"\n'
            f'[[customizations.user]]\nname = "core"\npassword = "{SHA512}"\n')
    assert lint(text, cfg_for("edge-simplified-installer")) == []


# -- installation device ---------------------------------------------------------------------------


def test_simplified_installer_needs_installation_device(lint) -> None:
    text = 'name = "gw"\nversion = "1.0.0"\n\n[customizations]\nfips = true\n'
    (f,) = lint(text, cfg_for("edge-simplified-installer"))
    assert f.rule == "installation-device" and f.lineno == 4


def test_installation_device_missing_without_customizations(lint) -> None:
    (f,) = lint('name = "gw"\nversion = "1.0.0"\n', cfg_for("edge-simplified-installer"))
    assert f.rule == "installation-device" and f.lineno == 1


def test_installation_device_present_passes(lint) -> None:
    text = 'name = "gw"\nversion = "1.0.0"\n[customizations]\ninstallation_device = "/dev/nvme0n1"\n'
    assert lint(text, cfg_for("edge-simplified-installer")) == []


# -- passwords -------------------------------------------------------------------------------------


@pytest.mark.parametrize("pw", ["hunter2", "!", "$6$short$abc", "$6$" + "a" * 20])
def test_clear_text_or_broken_password(lint, pw: str) -> None:
    text = GOOD.replace(SHA512, pw)
    (f,) = lint(text)
    assert f.rule == "plaintext-password" and f.severity == "error"
    assert f.key == "customizations.user[0].password" and f.lineno == line_of(text, "password =")
    assert pw not in f.message  # never echo a secret


@pytest.mark.parametrize("pw", [SHA512, YESCRYPT, "$1$saltsalt$qjXMvbEw8oaL.CzflDugX/",
                                "$2b$12$" + "a" * 53, ""])
def test_crypt_hashes_and_empty_password_pass(lint, pw: str) -> None:
    assert lint(GOOD.replace(SHA512, pw)) == []


def test_config_can_allow_clear_text_passwords(lint) -> None:
    assert lint(GOOD.replace(SHA512, "hunter2"), cfg_for(allow_plaintext_passwords=True)) == []


def test_is_crypt_hash() -> None:
    assert is_crypt_hash(SHA512) and is_crypt_hash(YESCRYPT)
    assert not is_crypt_hash("password") and not is_crypt_hash(SHA512[:-1])


# -- version bump against the base revision --------------------------------------------------------


def test_changed_blueprint_without_version_bump(lint) -> None:
    changed = GOOD.replace('name = "tmux"', 'name = "htop"')
    (f,) = lint(changed, base_text=GOOD, base_given=True)
    assert f.rule == "version-bump" and f.lineno == 3 and "1.0.1" in f.message


def test_version_going_down_is_a_finding(lint) -> None:
    older = GOOD.replace('version = "1.0.0"', 'version = "0.9.0"')
    base = GOOD.replace('version = "1.0.0"', 'version = "1.0.0"')
    assert rules(lint(older, base_text=base, base_given=True)) == {"version-bump"}
    pre = GOOD.replace('version = "1.0.0"', 'version = "1.0.0-rc.1"')
    assert rules(lint(pre, base_text=GOOD, base_given=True)) == {"version-bump"}


def test_bumped_or_unchanged_blueprint_passes(lint) -> None:
    bumped = GOOD.replace('version = "1.0.0"', 'version = "1.1.0"').replace("tmux", "htop")
    assert lint(bumped, base_text=GOOD, base_given=True) == []
    reformatted = "# a comment\n" + GOOD.replace('name = "gw"', 'name   =   "gw"')
    assert lint(reformatted, base_text=GOOD, base_given=True) == []
    assert lint(GOOD, base_text=None, base_given=True) == []  # new blueprint


def test_base_without_a_comparable_version_passes(lint) -> None:
    base = GOOD.replace('version = "1.0.0"\n', "")
    assert lint(GOOD.replace("tmux", "htop"), base_text=base, base_given=True) == []


def test_unparseable_base_is_a_warning(lint) -> None:
    (f,) = lint(GOOD, base_text="name = \n", base_given=True)
    assert (f.rule, f.severity) == ("version-bump", "warning")
    (g,) = lint(GOOD, base_text="x = " + "[" * 3000 + "]" * 3000, base_given=True)
    assert (g.rule, g.severity) == ("version-bump", "warning")


# -- production version ----------------------------------------------------------------------------


def test_version_not_above_production(lint) -> None:
    (f,) = lint(GOOD, cfg_for(production_versions={"gw": "1.0.0"}))
    assert f.rule == "production-version" and "1.0.0" in f.message and f.lineno == 3
    (g,) = lint(GOOD, production_version="2.0.0")
    assert g.rule == "production-version"


def test_version_above_production_passes(lint) -> None:
    assert lint(GOOD, cfg_for(production_versions={"gw": "0.9.9"})) == []
    assert lint(GOOD, cfg_for(production_versions={"gw": "9.0.0"}), production_version="0.1.0") == []


def test_not_applicable_rules_are_listed_with_reasons(tmp_path: Path) -> None:
    p = tmp_path / "gw.toml"
    p.write_text(GOOD)
    r = lint_file(p, Config())
    assert set(r.skipped) == {"installation-device", "version-bump", "production-version"}
    p.write_text("name = [")
    r = lint_file(p, Config())
    assert r.blueprint is None and set(r.skipped) == set(RULES) - {"syntax"}


# -- line scanner ----------------------------------------------------------------------------------


def test_key_lines_ignore_keys_inside_multiline_strings() -> None:
    text = '''name = "x"
[[customizations.files]]
path = "/etc/a"
data = """
[customizations.fake]
name = "not a key"
"""

[[customizations.files]]
path = '/etc/b'
data = \'\'\'
[[packages]]
\'\'\'
[[packages]]
name = "p"
'''
    lines = key_lines(text)
    assert lines[("customizations", "files", 0, "data")] == 4
    assert lines[("customizations", "files", 1)] == 9
    assert lines[("customizations", "files", 1, "path")] == 10
    assert lines[("packages", 0)] == 14 and lines[("packages", 0, "name")] == 15
    assert ("customizations", "fake") not in lines


def test_key_lines_inline_tables_arrays_dotted_and_quoted_keys() -> None:
    text = '''packages = [
  { name = "a" },
  { name = "b", version = "1" },
]
customizations.hostname = "h"
[customizations."kernel"]
'append' = "x"
[[customizations.user]]
name = "u"
[[customizations.user]]
name = "v"
'''
    lines = key_lines(text)
    assert lines[("packages", 0, "name")] == 2
    assert lines[("packages", 1, "version")] == 3
    assert lines[("customizations", "hostname")] == 5
    assert lines[("customizations", "kernel", "append")] == 7
    assert lines[("customizations", "user", 1, "name")] == 11


def test_finding_for_inline_array_element_points_at_its_line(lint) -> None:
    text = 'name = "gw"\nversion = "1.0.0"\npackages = [\n  {name = "a"},\n  {nmae = "b"},\n]\n'
    found = lint(text)
    assert {f.rule for f in found} == {"unknown-key", "type"}
    assert all(f.lineno == 5 for f in found)


def test_dotted() -> None:
    assert dotted(("customizations", "user", 0, "password")) == "customizations.user[0].password"
    assert dotted(("a b",)) == '"a b"'


def test_schema_has_the_reference_keys() -> None:
    assert {"name", "description", "version", "packages", "modules", "groups", "enabled_modules", "containers",
            "customizations", "distro", "architecture"} == set(BLUEPRINT_SCHEMA.fields)
    assert {"user", "group", "services", "firewall", "files", "directories", "kernel", "timezone", "locale",
            "installation_device", "fdo", "ignition", "disk", "filesystem", "partitioning_mode", "installer",
            "rhsm", "repositories", "fips", "dnf", "sshkey", "hostname"} <= set(CUSTOMIZATIONS.fields)


# -- fuzzing: malformed documents end in findings with a location or EdgeCIError, never a crash -----

_KEYS = sorted({*BLUEPRINT_SCHEMA.fields, *CUSTOMIZATIONS.fields, "password", "groups", "uid", "path", "mode",
                "data", "enabled", "nmae", "version", "x", "a-b", '"q k"', "'lit'"})
_HEADERS = ["[customizations]", "[[customizations.user]]", "[[packages]]", "[customizations.services]",
            "[[customizations.files]]", "[customizations.kernel]", "[[customizations.user.groups]]",
            "[customizations.firewall.services]", "[[groups]]", "[customizations", "[[packages]", "[]", "[a.b.c]"]
_VALUES = st.one_of(
    st.integers(-5, 10**6).map(str),
    st.sampled_from(['"1.0.0"', '"gw"', '"$6$abc"', "true", "false", "3.5", "[]", "{}", '["a", 1]',
                     '{ name = "x" }', '"""\nmulti\n"""', "'''lit'''", "1979-05-27", '"unterminated', "[1, [2]]",
                     "{ a = { b = 1 } }", "nan", "inf", '"\\u00e9"', '"\\q"', "[" * 400 + "]" * 400]),
    st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12).map(
        lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'),
)
_LINE = st.one_of(
    st.sampled_from(_HEADERS),
    st.tuples(st.sampled_from(_KEYS), _VALUES).map(lambda kv: f"{kv[0]} = {kv[1]}"),
    st.tuples(st.sampled_from(_KEYS), st.sampled_from(_KEYS), _VALUES).map(lambda k: f"{k[0]}.{k[1]} = {k[2]}"),
    st.text(max_size=20),
    st.just(""),
    st.just("# comment"),
)
_DOC = st.lists(_LINE, max_size=25).map("\n".join)


def _from_schema(spec: object, depth: int = 0) -> st.SearchStrategy[object]:
    """Values shaped like the schema, with wrong types, unknown keys and missing keys mixed in."""
    wrong = st.one_of(st.integers(-3, 3), st.booleans(), st.text(max_size=8), st.just([]), st.just({}))
    if depth > 4:
        return wrong
    if isinstance(spec, Table):
        optional: dict[str, st.SearchStrategy[object]] = {
            k: st.deferred(lambda v=v: st.one_of(_from_schema(v, depth + 1), wrong))
            for k, v in spec.fields.items()
        }
        optional["nmae"] = wrong
        return st.fixed_dictionaries({}, optional=optional)
    if isinstance(spec, ListOf):
        return st.one_of(st.lists(_from_schema(spec.item, depth + 1), max_size=3), wrong)
    return st.one_of(wrong, st.sampled_from(["1.0.0", "gw", "$6$x", "/etc/x", "0644", "edge", ""]))


def _toml_inline(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_inline(v) for v in value) + "]"
    assert isinstance(value, dict)
    return "{" + ", ".join(f"{json.dumps(k)} = {_toml_inline(v)}" for k, v in value.items()) + "}"


_STRUCTURED = _from_schema(BLUEPRINT_SCHEMA).map(
    lambda d: "\n".join(f"{json.dumps(k)} = {_toml_inline(v)}" for k, v in d.items()))
_BYTES = st.one_of(_DOC.map(lambda s: s.encode("utf-8", "surrogatepass")),
                   _STRUCTURED.map(lambda s: s.encode("utf-8", "surrogatepass")),
                   st.binary(max_size=60))

_FUZZ_DIR = Path(tempfile.mkdtemp(prefix="edgeci-fuzz-"))  # @given cannot use the function-scoped tmp_path
atexit.register(shutil.rmtree, _FUZZ_DIR, True)
_WHERE = re.compile(r"^.+:(\d+)$")


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=_BYTES, image_type=st.sampled_from(["edge-container", "edge-installer", "edge-simplified-installer",
                                                "edge-raw-image"]),
       base=st.one_of(st.none(), _DOC))
def test_fuzzed_documents_end_in_findings_with_location_or_edgeci_error(doc: bytes, image_type: str,
                                                                       base: str | None) -> None:
    p = _FUZZ_DIR / "fuzz.toml"
    p.write_bytes(doc)
    cfg = cfg_for(image_type, production_versions={"fuzz": "1.0.0"})
    try:
        result = lint_file(p, cfg, base_text=base, base_given=True)
    except EdgeCIError as e:
        assert str(e)
        return
    event("parsed" if result.blueprint is not None else "syntax finding")
    event("findings beyond syntax" if rules(result.findings) - {"syntax"} else "no findings beyond syntax")
    n_lines = doc.count(b"\n") + 1
    for f in result.findings:
        m = _WHERE.match(f.where)
        assert m, f
        assert 1 <= int(m.group(1)) <= n_lines, (f, n_lines)
        assert f.rule in RULES and f.severity in ("error", "warning") and f.message
    if result.blueprint is not None:
        assert lint_blueprint(result.blueprint, cfg) is not None


def test_with_version_rewrites_only_the_top_level_version(tmp_path: Path) -> None:
    from edgeci.blueprint import load, with_version

    p = tmp_path / "gw.toml"
    p.write_text('name = "gw"\nversion = "1.0.1"\n\n[[packages]]\nname = "x"\nversion = "2.0.0"\n')
    bp = with_version(load(p), "1.0.2")
    assert bp.version == "1.0.2" and bp.data["version"] == "1.0.2"
    assert bp.data["packages"][0]["version"] == "2.0.0"
    assert bp.sha256 == load(p).sha256  # the record keeps the hash of the file in git


def test_rebuild_accepts_production_version_but_not_an_older_one(tmp_path: Path) -> None:
    from edgeci.blueprint import lint_blueprint, load
    from edgeci.config import load_config

    p = tmp_path / "gw.toml"
    p.write_text('name = "gw"\nversion = "1.0.1"\n')
    cfg = load_config(None, env={}, root=tmp_path)
    bp = load(p)
    rules = lambda fs: [f.rule for f in fs if f.severity == "error"]  # noqa: E731
    assert rules(lint_blueprint(bp, cfg, production_version="1.0.1")) == ["production-version"]
    assert rules(lint_blueprint(bp, cfg, production_version="1.0.1", rebuild=True)) == []
    assert rules(lint_blueprint(bp, cfg, production_version="1.0.2", rebuild=True)) == ["production-version"]
