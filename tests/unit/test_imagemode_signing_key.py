"""EDGECI_IMAGE_SIGNING_KEY: the image push job's key material, with real GnuPG. The configured fingerprint
decides which key signs; the variable only brings its secret half, into a throwaway home removed afterwards."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from edgeci.errors import ConfigError, KeyFileError
from edgeci.imagemode.sign import GpgSigner, SigstoreSigner
from edgeci.imagemode.signing_key import ENV, push_signer
from edgeci.tools import gpg


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    base = tmp_path_factory.mktemp("gnupg")
    ours, theirs = base / "ours", base / "theirs"
    fpr = gpg.generate_key(ours, "edgeci images", "images@example.com")
    other = gpg.generate_key(theirs, "someone else", "else@example.com")
    exported = {}
    for name, home, key in (("ours", ours, fpr), ("theirs", theirs, other)):
        out = subprocess.run(["gpg", "--batch", f"--homedir={home}", "--armor", "--export-secret-keys", key],
                             check=True, capture_output=True, text=True).stdout
        path = base / f"{name}.asc"
        path.write_text(out)
        exported[name] = path
    yield {"fpr": fpr, "other": other, **exported}
    for home in (ours, theirs):
        gpg.kill_agent(home)


def test_without_the_variable_the_configured_signer_is_used(tmp_path: Path) -> None:
    configured = GpgSigner("ABCD", tmp_path)
    with push_signer(configured, env={}) as s:
        assert s is configured
    with push_signer(None, env={ENV: "/nonexistent"}) as s:
        assert s is None  # signing: none signs nothing, whatever the job is given


def test_the_bound_key_signs_from_a_throwaway_home_removed_afterwards(keys: dict, tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    blob.write_text("manifest")
    with push_signer(GpgSigner(str(keys["fpr"]), tmp_path / "unused"), env={ENV: str(keys["ours"])}) as s:
        assert isinstance(s, GpgSigner) and s.fingerprint == keys["fpr"]
        home = s.homedir
        assert home != tmp_path / "unused" and (os.stat(home).st_mode & 0o777) == 0o700
        subprocess.run(["gpg", "--batch", f"--homedir={home}", "--local-user", s.fingerprint, "--detach-sign",
                        str(blob)], check=True, capture_output=True)
    assert (tmp_path / "blob.sig").is_file()
    assert not Path(home).exists()


def test_another_key_is_refused_naming_both_fingerprints(keys: dict, tmp_path: Path) -> None:
    homes_before = set(Path(tempfile.gettempdir()).glob("edgeci-image-gnupg-*"))
    with pytest.raises(ConfigError) as e, \
            push_signer(GpgSigner(str(keys["fpr"]), tmp_path), env={ENV: str(keys["theirs"])}):
        pytest.fail("signed with another key")
    assert str(keys["other"]) in e.value.message and str(keys["fpr"]) in e.value.message
    assert set(Path(tempfile.gettempdir()).glob("edgeci-image-gnupg-*")) == homes_before


def test_a_pasted_key_or_a_missing_file_is_one_line_without_the_key(keys: dict, tmp_path: Path) -> None:
    text = Path(keys["ours"]).read_text()
    with pytest.raises(KeyFileError) as e, push_signer(GpgSigner("X", tmp_path), env={ENV: text}):
        pass
    assert "holds a key, not the path" in e.value.message and "BEGIN" not in str(e.value)
    with pytest.raises(KeyFileError, match="names no readable file"), \
            push_signer(GpgSigner("X", tmp_path), env={ENV: str(tmp_path / "none.asc")}):
        pass


def test_a_sigstore_site_gets_the_key_file_and_keeps_its_passphrase_file(tmp_path: Path) -> None:
    key = tmp_path / "cosign.key"
    key.write_text("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\n")
    phrase = tmp_path / "passphrase"
    with push_signer(SigstoreSigner(tmp_path / "configured.key", phrase), env={ENV: str(key)}) as s:
        assert s == SigstoreSigner(key, phrase)
