"""edgeci.trust: strict loading of the production host's trust policy, stricter-wins merging, GPG key check."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from edgeci.errors import ConfigError
from edgeci.evidence.rolekeys import SigningKey, write_key_pair
from edgeci.trust import (
    DEFAULT_BACKENDS,
    DEFAULT_SCENARIOS,
    check_production_key,
    effective,
    load_policy,
    parse_policy,
    project_settings,
)

MONDAY_NOON = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
SUNDAY_NOON = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


@pytest.fixture()
def keydir(tmp_path: Path) -> Path:
    for role in ("compose", "boot-test", "approver"):
        write_key_pair(SigningKey.generate(role), tmp_path / "keys")
    return tmp_path


def write(tmp: Path, text: str) -> Path:
    p = tmp / "trust.yaml"
    p.write_text(text)
    return p


GOOD = """\
schema: 1
keys:
  compose:
    - name: ci-compose
      file: keys/compose.pub
  boot-test:
    - keys/boot-test.pub
  approver:
    - name: alice
      approver: alice
      file: keys/approver.pub
approvals_required: 2
allowed_approvers: [alice, bob]
allowed_groups: [ops]
required_scenarios: [install, upgrade]
accepted_backends: [qemu]
windows: ["Mon-Fri 08:00-17:00"]
freeze: ["2026-12-20..2027-01-05"]
production:
  gpg_key: prod@example.com
  gpg_homedir: /etc/edgeci/gnupg
require_signed_production: true
"""


def test_a_complete_policy_loads(keydir: Path) -> None:
    pol = load_policy(write(keydir, GOOD))
    assert [(k.role, k.name) for k in pol.keys] == [("compose", "ci-compose"), ("boot-test", ""),
                                                    ("approver", "alice")]
    assert pol.keys_for("approver")[0].approver == "alice"
    assert pol.keys_for("compose")[0].source.endswith("trust.yaml:4: keys.compose.0")
    s = pol.settings
    assert (s.approvals_required, s.allowed_approvers, s.allowed_groups) == (2, ("alice", "bob"), ("ops",))
    assert s.required_scenarios == ("install", "upgrade") and s.accepted_backends == ("qemu",)
    assert pol.production.gpg_key == "prod@example.com"
    assert pol.where("production", "gpg_key").endswith("trust.yaml:20: production.gpg_key")


def test_defaults_are_the_strict_ones(keydir: Path) -> None:
    pub = (keydir / "keys" / "compose.pub").read_text().replace("\n", "\n        ")
    pol = parse_policy(f"schema: 1\nkeys:\n  compose:\n    - pem: |\n        {pub}\n"
                       "require_signed_production: false\n", str(keydir / "t.yaml"))
    assert pol.keys_for("compose")[0].keyid
    assert pol.settings.approvals_required == 1
    assert pol.settings.required_scenarios == DEFAULT_SCENARIOS == ("install", "upgrade", "rollback")
    assert pol.settings.accepted_backends == DEFAULT_BACKENDS == ("device", "qemu", "libvirt")
    with pytest.raises(ConfigError, match=r"t.yaml:1: production must be signed but production.gpg_key"):
        parse_policy("schema: 1\n", str(keydir / "t.yaml"))


@pytest.mark.parametrize("text, where, message", [
    ("schema: 1\nrequire_signed_production: false\napprovals: 2\n", ":3: approvals",
     "Did you mean 'approvals_required'"),
    ("schema: 1\nrequire_signed_production: false\napprovals_required: 0\n", ":3: approvals_required",
     "at least 1"),
    ("schema: 1\nrequire_signed_production: false\napprovals_required: 'two'\n", ":3: approvals_required",
     "whole number"),
    ("schema: 1\nrequire_signed_production: false\napprovals_required: true\n", ":3: approvals_required",
     "whole number"),
    ("schema: 1\nrequire_signed_production: false\nallowed_approvers: alice\n", ":3: allowed_approvers",
     "list of strings"),
    ("schema: 1\nrequire_signed_production: false\nallowed_approvers: [alice]\nallowed_approvers: [bob]\n",
     ":4: allowed_approvers", "duplicate key 'allowed_approvers' (first on line 3)"),
    ("schema: 1\nrequire_signed_production: false\nx: &a [alice]\nallowed_approvers: *a\n", ":3",
     "anchors and aliases"),
    ("schema: 1\nrequire_signed_production: false\nallowed_approvers: &a [alice]\n", ":3", "anchors and aliases"),
    ("schema: 1\nrequire_signed_production: false\naccepted_backends:\n  - qemu\n  - sysrot\n",
     ":5: accepted_backends.1", "Did you mean 'sysroot'"),
    ("schema: 1\nrequire_signed_production: false\nrequired_scenarios: []\n", ":3: required_scenarios", "empty"),
    ("schema: 1\nrequire_signed_production: false\nwindows:\n  - Mon-Fri 08:00-17:00\n  - Mon-Fri 8-17\n",
     ":5: windows.1", "'8' is not a time of day"),
    ("schema: 1\nrequire_signed_production: false\nfreeze: ['2026-12-20..2026-12-01']\n", ":3: freeze.0",
     "ends before it starts"),
    ("schema: 1\nrequire_signed_production: 'yes'\n", ":2: require_signed_production", "true or false"),
    ("schema: 2\n", ":1: schema", "not supported"),
    ("require_signed_production: false\n", ":1", "no 'schema'"),
    ("schema: 1\nrequire_signed_production: false\nproduction: {gpg_key: ABC, gpg_home: /x}\n",
     ":3: production.gpg_home", "Did you mean 'gpg_homedir'"),
    ("schema: 1\nrequire_signed_production: false\nkeys:\n  production: [{file: prod.pub}]\n",
     ":4: keys.production", "GPG key"),
    ("schema: 1\nrequire_signed_production: false\nkeys:\n  composer: []\n", ":4: keys.composer",
     "Did you mean 'compose'"),
    ("schema: 1\nrequire_signed_production: false\nkeys:\n  compose:\n    - name: x\n", ":5: keys.compose.0",
     "exactly one of 'file' and 'pem'"),
    ("schema: 1\nrequire_signed_production: false\nkeys:\n  compose:\n    - file: missing.pub\n",
     ":5: keys.compose.0.file", "public key file not found"),
    ("schema: 1\nrequire_signed_production: false\nkeys:\n  compose:\n    - pem: not a key\n",
     ":5: keys.compose.0.pem", "not a PEM public key"),
    ("schema: 1\nrequire_signed_production: false\nkeys:\n  compose:\n    - {file: keys/compose.pub, approver: a}\n",
     ":5: keys.compose.0.approver", "only for keys.approver"),
    ("schema: 1\nrequire_signed_production: false\nkeys:\n  compose: [keys/compose.pub]\n"
     "  boot-test: [keys/compose.pub]\n", ":5: keys.boot-test.0", "already listed at keys.compose.0"),
    ("schema: 1\nrequire_signed_production: false\nallowed_groups: [ops\n", "", "invalid YAML"),
    ("- schema\n", ":1", "must be a mapping"),
])
def test_strict_loading_errors_name_file_line_and_fix(keydir: Path, text: str, where: str, message: str) -> None:
    path = write(keydir, text)
    with pytest.raises(ConfigError) as e:
        load_policy(path)
    assert e.value.exit_code == 2
    assert f"{path}{where}" in str(e.value), str(e.value)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_missing_policy_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"trust policy not found.*--policy"):
        load_policy(tmp_path / "nope.yaml")


def policy_of(keydir: Path, text: str = GOOD):
    return load_policy(write(keydir, text))


def test_effective_without_project_is_the_trust_policy(keydir: Path) -> None:
    eff, diffs = effective(policy_of(keydir))
    assert diffs == []
    assert eff.approvals_required == 2 and eff.accepted_backends == ("qemu",)
    assert eff.approver_problem("alice") == ""
    assert eff.approver_problem("carol", groups=["ops"]) == ""
    assert "does not say which groups" in eff.approver_problem("carol")
    assert eff.window_problem(MONDAY_NOON) == ""
    assert "outside the change windows" in eff.window_problem(SUNDAY_NOON)
    assert "freeze" in eff.window_problem(datetime(2026, 12, 22, 12, 0, tzinfo=UTC))


def test_stricter_wins_and_every_difference_is_one_line(keydir: Path) -> None:
    pol = policy_of(keydir)
    project = {"approvals_required": 3, "allowed_approvers": ["bob", "carol"], "allowed_groups": [],
               "required_scenarios": ["rollback"], "accepted_backends": ["qemu", "sysroot"],
               "windows": ["Mon-Wed 10:00-12:00"], "freeze": ["2026-11-25"], "require_signed_production": False}
    eff, diffs = effective(pol, project)
    assert eff.approvals_required == 3
    assert eff.required_scenarios == ("install", "upgrade", "rollback")
    assert eff.accepted_backends == ("qemu",)
    assert eff.freeze == ("2026-12-20..2027-01-05", "2026-11-25")
    assert eff.require_signed_production is True
    # both must allow: bob is allowed by both; alice only by the trust policy; carol needs the ops group too
    assert eff.approver_problem("bob") == ""
    assert "project" in eff.approver_problem("alice")
    assert eff.approver_problem("carol") != "" and eff.approver_problem("carol", groups=["ops"]) == ""
    # windows of both: Monday 12:00 is outside the project's 10-12; Monday 11:00 inside both
    assert eff.window_problem(MONDAY_NOON) != ""
    assert eff.window_problem(MONDAY_NOON.replace(hour=11)) == ""
    assert "freeze" in eff.window_problem(datetime(2026, 11, 25, 11, 0, tzinfo=UTC))
    names = [d.split(":", 1)[0] for d in diffs]
    assert names == ["approvals_required", "allowed approvers", "required_scenarios", "accepted_backends",
                     "windows", "freeze", "require_signed_production"]
    assert all("\n" not in d for d in diffs)
    assert "→ 3" in diffs[0] and "→ qemu" in diffs[3]


def test_the_project_cannot_lower_the_trust_policy(keydir: Path) -> None:
    pol = policy_of(keydir)
    eff, diffs = effective(pol, {"approvals_required": 0, "allowed_approvers": [], "allowed_groups": [],
                                 "accepted_backends": ["sysroot", "qemu", "libvirt"], "windows": [], "freeze": [],
                                 "require_signed_production": False})
    assert eff.approvals_required == 2
    assert eff.accepted_backends == ("qemu",)
    assert eff.require_signed_production is True
    assert eff.approver_problem("mallory") != ""
    assert eff.window_problem(SUNDAY_NOON) != ""
    assert any("below the trust policy's 2" in d for d in diffs)
    assert any(d.startswith("allowed approvers: the project allows anyone") for d in diffs)


def test_user_lists_intersect_and_an_empty_intersection_is_said(keydir: Path) -> None:
    text = GOOD.replace("allowed_groups: [ops]\n", "")
    eff, diffs = effective(policy_of(keydir, text), {"allowed_approvers": ["Carol"]})
    assert eff.approver_problem("alice") != "" and eff.approver_problem("carol") != ""
    assert diffs == ["allowed approvers: the trust policy allows alice, bob, the project Carol → only none "
                     "(no one can approve)"]
    eff, diffs = effective(policy_of(keydir, text), {"allowed_approvers": ["BOB@example.com", "carol"]})
    assert eff.approver_problem("bob") == "" and eff.approver_problem("alice") != ""


def test_project_settings_from_an_edgeci_config(keydir: Path) -> None:
    from edgeci.config import load_config

    cfg_path = keydir / "edgeci.yaml"
    cfg_path.write_text("gate:\n  approvals_required: 4\n  allowed_users: [bob]\nprod:\n  gpg_key: ABCD\n")
    cfg = load_config(cfg_path, env={})
    settings = project_settings(cfg)
    assert settings["approvals_required"] == 4 and settings["require_signed_production"] is True
    eff, _ = effective(policy_of(keydir), settings)
    assert eff.approvals_required == 4


@pytest.fixture()
def gnupg_home() -> Iterator[tuple[Path, str]]:
    from edgeci.tools import gpg

    if not shutil.which("gpg"):
        pytest.skip("gpg is not installed (make test installs gnupg)")
    base = Path(tempfile.mkdtemp(prefix="etr"))  # short: gpg-agent's socket path is limited
    try:
        home = base / "g"
        fpr = gpg.generate_key(home, "edgeci production", "prod@example.com")
        yield home, fpr
    finally:
        gpg.kill_agent(base / "g")
        shutil.rmtree(base, ignore_errors=True)


def test_production_gpg_key_is_checked_in_its_homedir(keydir: Path, gnupg_home: tuple[Path, str]) -> None:
    home, fpr = gnupg_home
    text = GOOD.replace("/etc/edgeci/gnupg", str(home))
    assert check_production_key(policy_of(keydir, text)) == fpr
    wrong = policy_of(keydir, text.replace("prod@example.com", "someone@example.com"))
    with pytest.raises(ConfigError) as e:
        check_production_key(wrong)
    assert "trust.yaml:20: production.gpg_key" in str(e.value)
    assert "no secret key 'someone@example.com'" in str(e.value)
    assert "production.gpg_homedir" in str(e.value) and "prod.gpg_key" not in str(e.value)
