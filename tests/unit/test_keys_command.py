"""`edgeci keys init|list`: key files with the right modes, no overwrite without --force, where to put them."""

from __future__ import annotations

import argparse
import stat
from pathlib import Path

import pytest

from edgeci.commands import keys as keys_command
from edgeci.config import load_config
from edgeci.errors import ConfigError
from edgeci.evidence.rolekeys import load_public_key, load_signing_key


def run(argv: list[str], tmp_path: Path) -> int:
    parser = argparse.ArgumentParser(prog="edgeci keys")
    keys_command.add_arguments(parser)
    args = parser.parse_args(argv)
    cfg = load_config(None, env={}, root=tmp_path)
    return keys_command.run(args, cfg)


def test_init_creates_the_pair_with_modes_and_says_where_it_goes(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "k"
    assert run(["init", "boot-test", "--dir", str(d)], tmp_path) == 0
    priv, pub = d / "boot-test.key", d / "boot-test.pub"
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    assert stat.S_IMODE(pub.stat().st_mode) == 0o644
    key = load_signing_key("boot-test", env={"EDGECI_BOOT_TEST_KEY": str(priv)})
    assert load_public_key(pub, "boot-test").keyid == key.keyid
    out = capsys.readouterr().out
    assert f"created the boot-test key {key.keyid}" in out
    assert "EDGECI_BOOT_TEST_KEY, type File, Protected" in out
    assert "'Secret file'" in out and "variable: 'EDGECI_BOOT_TEST_KEY'" in out
    assert "    boot-test:\n" in out and "file: /etc/edgeci/keys/boot-test.pub" in out
    assert priv.read_text().splitlines()[1] not in out  # the private key is never printed


def test_init_refuses_to_overwrite_without_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "k"
    run(["init", "approver", "--dir", str(d)], tmp_path)
    before = (d / "approver.key").read_bytes()
    with pytest.raises(ConfigError) as e:
        run(["init", "approver", "--dir", str(d)], tmp_path)
    assert e.value.exit_code == 2
    assert "approver.key already exists" in str(e.value) and "--force" in str(e.value)
    assert (d / "approver.key").read_bytes() == before
    assert run(["init", "approver", "--dir", str(d), "--force"], tmp_path) == 0
    assert (d / "approver.key").read_bytes() != before
    assert stat.S_IMODE((d / "approver.key").stat().st_mode) == 0o600
    assert "approver: USER" in capsys.readouterr().out


def test_init_defaults_to_the_build_dir_and_rejects_unknown_roles(tmp_path: Path) -> None:
    assert run(["init", "compose"], tmp_path) == 0
    assert (tmp_path / "build" / "keys" / "compose.key").is_file()
    with pytest.raises(SystemExit):
        run(["init", "production"], tmp_path)


def test_list_shows_roles_names_and_keyids(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(["init", "compose", "--dir", str(tmp_path / "k")], tmp_path)
    keyid = load_public_key(tmp_path / "k" / "compose.pub", "compose").keyid
    pol = tmp_path / "trust.yaml"
    pol.write_text("schema: 1\nrequire_signed_production: false\n"
                   "keys:\n  compose: [{name: ci-compose, file: k/compose.pub}]\n")
    capsys.readouterr()
    assert run(["list", "--policy", str(pol)], tmp_path) == 0
    out = capsys.readouterr().out
    assert f"compose    ci-compose           {keyid}" in out
    assert "boot-test  (no key" in out
    assert "signed production not required" in out


def test_the_cli_runs_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from edgeci import cli

    if "keys" not in cli.COMMANDS:
        pytest.skip("edgeci.cli does not register the keys command yet")
    monkeypatch.chdir(tmp_path)
    d = tmp_path / "k"
    assert cli.main(["keys", "init", "compose", "--dir", str(d)]) == 0
    assert cli.main(["keys", "init", "compose", "--dir", str(d)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "compose.key already exists" in err[0]
