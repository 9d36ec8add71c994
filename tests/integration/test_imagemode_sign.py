"""Image mode signatures with real skopeo, gnupg and docker-registry: push by digest signed with a GPG key
into a lookaside store, and a device (real skopeo with the generated policy.json and registries.d) that pulls
the signed image, refuses an unsigned one and one signed by another key.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgeci.errors import ConfigError, RegistryError
from edgeci.imagemode import build, sign
from edgeci.tools import buildah
from edgeci.tools.run import have
from edgeci.tools.skopeo import Creds
from tests.fixtures.promote import GpgKeys
from tests.fixtures.registry import Registry
from tests.integration import test_imagemode_build as tb

BASE_NAME, write_image_source = tb.BASE_NAME, tb.write_image_source
base_archive = tb.base_archive  # the session fixture, shared

pytestmark = pytest.mark.skipif(not (have("buildah") and have("skopeo") and have("gpg")),
                                reason="buildah, skopeo and gpg are required")


@dataclass
class Built:
    one: build.BuiltImage
    two: build.BuiltImage


@pytest.fixture(scope="module")
def built_images(request: pytest.FixtureRequest) -> Iterator[Built]:
    """gateway 1.0.0 and 1.0.1 as OCI archives (built once for the module)."""
    base: Path = request.getfixturevalue("base_archive")
    tmp = Path(tempfile.mkdtemp(prefix="edgeci-imgs-"))
    try:
        with build.private_storage(tmp) as st:
            build.import_base(st, base, BASE_NAME)
            bps = tmp / "blueprints"
            one = build.build_image(write_image_source(bps, "gateway", "1.0.0"), tmp / "1.tar", storage=st,
                                    name="gateway", pull="never")
            two = build.build_image(write_image_source(bps, "gateway", "1.0.1"), tmp / "2.tar", storage=st,
                                    name="gateway", pull="never")
        yield Built(one, two)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def endpoint(reg: Registry) -> sign.Endpoint:
    return sign.Endpoint(tls_verify=False, creds=Creds(reg.user, reg.password))


@dataclass
class SignedStage:
    stage: str
    prod: str
    registries_d: Path
    endpoint: sign.Endpoint
    sigstore: Path  # the lookaside signature store


def push_signed_stage(tmp_path: Path, reg: Registry, keys: GpgKeys, images: Sequence[build.BuiltImage]) -> SignedStage:
    """`images` pushed to the stage repository signed by `keys`, with the registries.d (one lookaside for the
    stage and production repositories) a CI job would use."""
    ep = endpoint(reg)
    stage, prod = f"{reg.host}/stage/gateway", f"{reg.host}/prod/gateway"
    sigstore = tmp_path / "sigstore"
    rd = sign.write_registries_d(tmp_path / "ci.d", {
        r: sign.registries_d_entry(lookaside=sigstore.as_uri(), lookaside_staging=sigstore.as_uri())
        for r in (stage, prod)}).parent
    signer = sign.GpgSigner(keys.key, keys.home)
    for img in images:
        sign.push_signed(img.archive, stage, [img.version], expected_digest=img.digest, layers=[], signer=signer,
                         registries_d=rd, endpoint=ep)
    return SignedStage(stage, prod, rd, ep, sigstore)


def device_pull(reg: Registry, ref: str, device_etc: Path, dest: Path) -> sign.CopyResult:
    """What a device does before deploying: pull by reference enforcing its own policy.json."""
    return sign.copy(ref, f"dir:{dest}", registries_d=device_etc / sign.DEVICE_REGISTRIES_D,
                     policy=device_etc / sign.DEVICE_POLICY, src_endpoint=endpoint(reg))


def test_signed_push_and_the_device_policy(tmp_path: Path, registry: Registry, promote_gpg: GpgKeys,
                                           built_images: Built) -> None:
    img = built_images.one
    sigstore = tmp_path / "sigstore"
    repo = f"{registry.host}/prod/gateway"
    writer = sign.write_registries_d(tmp_path / "writer.d", {
        repo: sign.registries_d_entry(lookaside=sigstore.as_uri(), lookaside_staging=sigstore.as_uri())})
    pushed = sign.push_signed(img.archive, repo, ["1.0.0", "latest"], expected_digest=img.digest,
                              layers=[layer.as_dict() for layer in img.layers],
                              signer=sign.GpgSigner(promote_gpg.key, promote_gpg.home),
                              registries_d=writer.parent, endpoint=endpoint(registry))
    assert pushed.digest == img.digest
    assert pushed.refs[-1] == f"docker://{repo}@{img.digest}"
    assert pushed.image_bytes == img.size
    sig_files = sorted(p.relative_to(sigstore).as_posix() for p in sigstore.rglob("signature-*"))
    assert sig_files and all(s.startswith(f"prod/gateway@sha256={img.digest[7:]}/") for s in sig_files)

    # Unsigned: the same content under another tag in an unsigned repository path.
    unsigned_repo = f"{registry.host}/prod/unsigned"
    sign.copy(f"oci-archive:{img.archive}", f"docker://{unsigned_repo}:1.0.0", dest_endpoint=endpoint(registry))

    device = tmp_path / "device"
    dev = sign.write_device_config(device, prod_repo=repo, lookaside_url=sigstore.as_uri(),
                                   public_key=promote_gpg.public.read_text(), device_root=str(device))
    policy = json.loads(dev.policy.read_text())
    assert policy["default"] == [{"type": "reject"}]
    assert policy["transports"]["docker"][repo][0]["type"] == "signedBy"

    got = device_pull(registry, f"docker://{repo}@{img.digest}", device, tmp_path / "pulled")
    assert got.digest == img.digest
    # Signed for 1.0.0: a pinned device takes that tag, but not another tag pointing at the same digest.
    assert device_pull(registry, f"docker://{repo}:1.0.0", device, tmp_path / "p2").digest == img.digest
    with pytest.raises(RegistryError, match=r"identity .*:1\.0\.0 is not accepted"):
        device_pull(registry, f"docker://{repo}:latest", device, tmp_path / "p3")
    # A device that follows tags accepts any tag of the repository the signature was made for.
    follower = tmp_path / "follower"
    sign.write_device_config(follower, prod_repo=repo, lookaside_url=sigstore.as_uri(), follow_tags=True,
                             public_key=promote_gpg.public.read_text(), device_root=str(follower))
    assert device_pull(registry, f"docker://{repo}:latest", follower, tmp_path / "p4").digest == img.digest

    # Unsigned repository: the default (reject) applies.
    with pytest.raises(RegistryError, match="refused"):
        device_pull(registry, f"docker://{unsigned_repo}:1.0.0", device, tmp_path / "no1")
    # A device that trusts only another key refuses the signed image.
    other = tmp_path / "other-device"
    sign.write_device_config(other, prod_repo=repo, lookaside_url=sigstore.as_uri(),
                             public_key=promote_gpg.other_public.read_text(), device_root=str(other))
    with pytest.raises(RegistryError, match="signature policy refused"):
        device_pull(registry, f"docker://{repo}@{img.digest}", other, tmp_path / "no2")


def test_signed_by_the_wrong_key_is_refused(tmp_path: Path, registry: Registry, promote_gpg: GpgKeys,
                                            built_images: Built) -> None:
    img = built_images.two
    sigstore = tmp_path / "sigstore"
    repo = f"{registry.host}/prod/gateway"
    writer = sign.write_registries_d(tmp_path / "writer.d", {
        repo: sign.registries_d_entry(lookaside_staging=sigstore.as_uri())})
    sign.push_signed(img.archive, repo, ["1.0.1"], expected_digest=img.digest, layers=[],
                     signer=sign.GpgSigner(promote_gpg.other_key, promote_gpg.other_home),
                     registries_d=writer.parent, endpoint=endpoint(registry))
    device = tmp_path / "device"
    sign.write_device_config(device, prod_repo=repo, lookaside_url=sigstore.as_uri(),
                             public_key=promote_gpg.public.read_text(), device_root=str(device))
    with pytest.raises(RegistryError, match="signature policy refused"):
        device_pull(registry, f"docker://{repo}:1.0.1", device, tmp_path / "no")


def test_a_signature_that_cannot_be_stored_fails_the_push(tmp_path: Path, registry: Registry,
                                                         promote_gpg: GpgKeys, built_images: Built) -> None:
    img = built_images.one
    repo = f"{registry.host}/prod/gateway"
    signer = sign.GpgSigner(promote_gpg.key, promote_gpg.home)
    empty = tmp_path / "empty.d"
    empty.mkdir()
    # No store configured: refused before anything is pushed (skopeo would write to this machine's own store).
    with pytest.raises(ConfigError, match="no signature store"):
        sign.push_signed(img.archive, repo, ["1.0.0"], expected_digest=img.digest, layers=[], signer=signer,
                         registries_d=empty, endpoint=endpoint(registry))
    # A store that cannot be written (its parent is a file): skopeo fails storing the signature.
    (tmp_path / "not-a-dir").write_text("x")
    bad = sign.write_registries_d(tmp_path / "bad.d", {
        repo: sign.registries_d_entry(lookaside_staging=(tmp_path / "not-a-dir" / "sigs").as_uri())})
    with pytest.raises(RegistryError, match="signing or storing the signature failed"):
        sign.push_signed(img.archive, repo, ["1.0.0"], expected_digest=img.digest, layers=[], signer=signer,
                         registries_d=bad.parent, endpoint=endpoint(registry))


def test_base_storage_is_private(tmp_path: Path) -> None:
    st = buildah.Storage.under(tmp_path / "s")
    assert st.args() == ["--root", str(tmp_path / "s" / "root"), "--runroot", str(tmp_path / "s" / "runroot"),
                         "--storage-driver", "vfs"]


def test_a_ci_push_signs_with_the_bound_key_material_and_the_device_accepts_it(
        tmp_path: Path, registry: Registry, promote_gpg: GpgKeys, built_images: Built) -> None:
    """The push job of a CI runner without the keyring: EDGECI_IMAGE_SIGNING_KEY (the exported secret key, a File
    variable) signs as image_mode.gpg_key; the device's policy accepts the image."""
    import subprocess

    from edgeci.imagemode.signing_key import ENV, push_signer

    exported = tmp_path / "image-signing.asc"
    exported.write_text(subprocess.run(["gpg", "--batch", f"--homedir={promote_gpg.home}", "--armor",
                                        "--export-secret-keys", promote_gpg.key],
                                       check=True, capture_output=True, text=True).stdout)
    img = built_images.one
    sigstore = tmp_path / "sigstore"
    repo = f"{registry.host}/prod/ci-signed"
    writer = sign.write_registries_d(tmp_path / "writer.d", {
        repo: sign.registries_d_entry(lookaside=sigstore.as_uri(), lookaside_staging=sigstore.as_uri())})
    runner_keyring = tmp_path / "runner-gnupg"  # the runner's own keyring holds nothing
    runner_keyring.mkdir(mode=0o700)
    with push_signer(sign.GpgSigner(promote_gpg.key, runner_keyring), env={ENV: str(exported)}) as signer:
        sign.push_signed(img.archive, repo, ["1.0.0"], expected_digest=img.digest, layers=[], signer=signer,
                         registries_d=writer.parent, endpoint=endpoint(registry))
    assert not list(runner_keyring.iterdir())  # nothing was imported into the runner's keyring
    device = tmp_path / "device"
    sign.write_device_config(device, prod_repo=repo, lookaside_url=sigstore.as_uri(),
                             public_key=promote_gpg.public.read_text(), device_root=str(device))
    assert device_pull(registry, f"docker://{repo}@{img.digest}", device, tmp_path / "pulled").digest == img.digest
