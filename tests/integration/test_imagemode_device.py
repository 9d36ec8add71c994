"""The device side of image mode with real skopeo, gnupg, docker-registry and ostree: edgeci's stand-in for
bootc (edgeci.imagemode.device) pulls a production image by digest enforcing the generated policy.json,
unpacks it, commits it to a sysroot's ostree repo and deploys it. A device refuses an unsigned and a wrongly
signed production image and takes the signed one; an update downloads only the changed layer; a RHEL 9 edge
device on an ostree production commit moves to the image's deployment and back (the migration's sequence).
"""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path

import pytest

from edgeci.boottest.sysroot_guest import SysrootGuest
from edgeci.errors import RegistryError
from edgeci.imagemode import device, sign
from edgeci.imagemode import release as promote
from edgeci.tools import ostree
from edgeci.tools.run import have
from tests.fixtures.promote import GpgKeys, promote_write_tree
from tests.fixtures.registry import Registry
from tests.integration import test_imagemode_sign as ts

base_archive = ts.base_archive
built_images = ts.built_images

pytestmark = pytest.mark.skipif(not all(have(t) for t in ("buildah", "skopeo", "gpg", "ostree", "unshare")),
                                reason="buildah, skopeo, gpg, ostree and unshare are required")


def _publish(tmp_path: Path, registry: Registry, keys: GpgKeys, built: ts.Built) -> tuple[str, str, Path, Path]:
    """1.0.0 and 1.0.1 pushed signed to the stage repository, 1.0.0 then 1.0.1 promoted to production."""
    st = ts.push_signed_stage(tmp_path, registry, keys, [built.one, built.two])
    ep, stage, prod, rd, sigstore = st.endpoint, st.stage, st.prod, st.registries_d, st.sigstore
    previous = None
    for img in (built.one, built.two):
        promote.promote(digest=img.digest, version=img.version, stage_repo=stage, prod_repo=prod, prod_tag="stable",
                        expected_previous=previous, releases_log=tmp_path / "releases.json", registries_d=rd,
                        stage_endpoint=ep, prod_endpoint=ep)
        previous = img.digest
    return stage, prod, sigstore, rd


def _trust(stage: str, prod: str, sigstore: Path, public: Path) -> device.DeviceTrust:
    return device.DeviceTrust({prod: stage}, public.read_text(), sigstore.as_uri())


def test_device_takes_the_signed_production_image_and_refuses_unsigned_or_wrongly_signed(
        tmp_path: Path, registry: Registry, promote_gpg: GpgKeys, built_images: ts.Built) -> None:
    one, two = built_images.one, built_images.two
    stage, prod, sigstore, _ = _publish(tmp_path, registry, promote_gpg, built_images)
    ep = ts.endpoint(registry)
    # An unsigned copy of the same image in production's repository, under another tag (no signature for it
    # exists in the lookaside store: the copy is of an archive, not of a signed image), and one signed by a
    # stranger's key in a repository whose policy names the production key.
    unsigned = f"{registry.host}/prod/gateway-unsigned"
    sign.copy(f"oci-archive:{one.archive}", f"docker://{unsigned}:1.0.0", dest_endpoint=ep)
    stranger = f"{registry.host}/prod/gateway-other"
    other_rd = sign.write_registries_d(tmp_path / "other.d", {
        stranger: sign.registries_d_entry(lookaside_staging=sigstore.as_uri())}).parent
    sign.push_signed(one.archive, stranger, ["1.0.0"], expected_digest=one.digest, layers=[],
                     signer=sign.GpgSigner(promote_gpg.other_key, promote_gpg.other_home), registries_d=other_rd,
                     endpoint=ep)

    trust = device.DeviceTrust({prod: stage, unsigned: None, stranger: None},
                               promote_gpg.public.read_text(), sigstore.as_uri())
    policy, registries_d = trust.write(tmp_path / "device")
    repo = tmp_path / "repo"
    ostree.init(repo, mode="bare-user")

    def pull(image: str) -> device.ImageCommit:
        return device.pull_and_commit(image, repo, ref="ostree/container/image/gateway", policy=policy,
                                      registries_d=registries_d, blob_cache=tmp_path / "cache", endpoint=ep,
                                      user_namespace=False)

    with pytest.raises(RegistryError, match="signature policy refused"):
        pull(f"docker://{unsigned}@{one.digest}")
    with pytest.raises(RegistryError, match="signature policy refused"):
        pull(f"docker://{stranger}@{one.digest}")
    assert device._blobs(tmp_path / "cache") == {}  # nothing of a refused image was kept

    first = pull(f"docker://{prod}@{one.digest}")
    assert first.digest == one.digest and ostree.is_checksum(first.checksum)
    assert first.downloaded_bytes >= one.size and first.layers_fetched == first.layers == 2
    assert device.image_digest_of(repo, first.checksum, user_namespace=False) == one.digest
    # The image's tree, as bootc lays it out: /etc moved to /usr/etc, the COPYed file and the RUN's output.
    r = ostree.cli(repo, "cat", first.checksum, "/usr/etc/gateway/gateway.conf")
    assert "release = 1.0.0" in r.stdout
    assert ostree.cli(repo, "cat", first.checksum, "/usr/share/gateway/release").stdout.strip() == "1.0.0"

    # The update downloads the changed layer (and the new config and manifest), not the base again.
    second = pull(f"docker://{prod}@{two.digest}")
    changed = [layer for layer in two.layers if layer.digest not in {x.digest for x in one.layers}]
    assert second.layers_fetched == len(changed) == 1
    assert changed[0].size <= second.downloaded_bytes < changed[0].size + 10_000
    assert second.downloaded_bytes < two.size // 10
    # By tag: refused before anything is pulled (the stand-in pulls the tested digest only).
    with pytest.raises(Exception, match="not an image by digest"):
        pull(f"docker://{prod}:stable")


def test_a_device_trusting_another_key_refuses_production(tmp_path: Path, registry: Registry,
                                                          promote_gpg: GpgKeys, built_images: ts.Built) -> None:
    stage, prod, sigstore, _ = _publish(tmp_path, registry, promote_gpg, built_images)
    policy, rd = _trust(stage, prod, sigstore, promote_gpg.other_public).write(tmp_path / "device")
    repo = tmp_path / "repo"
    ostree.init(repo, mode="bare-user")
    with pytest.raises(RegistryError, match="signature policy refused"):
        device.pull_and_commit(f"docker://{prod}@{built_images.one.digest}", repo, ref="img", policy=policy,
                               registries_d=rd, blob_cache=tmp_path / "cache", endpoint=ts.endpoint(registry),
                               user_namespace=False)
    assert ostree.rev_parse(repo, "img") is None


def _ostree_production(tmp_path: Path) -> tuple[Path, str]:
    """A RHEL 9 edge production: an ostree commit of an OS tree in an archive repo."""
    tree, repo = tmp_path / "tree", tmp_path / "prod-repo"
    promote_write_tree(tree, "9.4.0")
    ostree.init(repo)
    return repo, ostree.commit(repo, "rhel/9/x86_64/edge", tree_dir=tree, subject="edge 9.4.0")


def test_migration_ostree_production_to_image_and_back(tmp_path: Path, registry: Registry,
                                                       promote_gpg: GpgKeys, built_images: ts.Built) -> None:
    stage, prod, sigstore, _ = _publish(tmp_path, registry, promote_gpg, built_images)
    prod_repo, edge_commit = _ostree_production(tmp_path)
    settings = device.DeviceSettings(_trust(stage, prod, sigstore, promote_gpg.public),
                                     endpoint=ts.endpoint(registry), image_name="gateway")
    g = device.BootcStandInGuest(SysrootGuest(tmp_path / "dev" / "migrate", "rhel"), settings)
    with g:
        # RHEL 9 for Edge: the device runs production's ostree commit.
        g.inner.deploy("edge", prod_repo.as_uri(), "rhel/9/x86_64/edge", edge_commit)
        assert g.boot().commit == edge_commit
        # `bootc switch` / `rpm-ostree rebase ostree-image-signed:…`: the promoted image, by digest.
        dep = g.deploy("prod", f"docker://{prod}", "", built_images.two.digest)
        assert dep.commit == built_images.two.digest[7:]
        booted = g.boot()
        assert booted.commit == built_images.two.digest[7:]
        assert booted.tree is not None and (booted.tree / "usr" / "share" / "gateway" / "release").read_text() \
            .strip() == "1.0.1"
        assert "from image sha256:" in booted.entry
        # `rpm-ostree rollback` / `bootc rollback`: back to the ostree commit, which is still deployed.
        rr = g.prove_rollback()
        assert rr.previous.commit == edge_commit and "not from an image" in rr.previous.entry
        assert g.inner.deployments()[0].checksum == edge_commit
    assert not g.inner.work_dir.exists() and not g.blob_cache.exists()


def test_whiteouts_remove_what_lower_layers_added(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    lower, upper = tmp_path / "l.tar", tmp_path / "u.tar"
    src = tmp_path / "src"
    (src / "etc" / "old").mkdir(parents=True)
    (src / "etc" / "old" / "a").write_text("a")
    (src / "etc" / "gone").write_text("x")
    (src / "etc" / "keep").write_text("k")
    with tarfile.open(lower, "w:gz") as t:
        t.add(src, arcname=".")
    shutil.rmtree(src)
    (src / "etc" / "old").mkdir(parents=True)
    (src / "etc" / "old" / ".wh..wh..opq").write_text("")
    (src / "etc" / "old" / "b").write_text("b")
    (src / "etc" / ".wh.gone").write_text("")
    with tarfile.open(upper, "w") as t:
        t.add(src, arcname=".")
    device.apply_layer(lower, root)
    device.apply_layer(upper, root)
    assert sorted(p.name for p in (root / "etc" / "old").iterdir()) == ["b"]
    assert not (root / "etc" / "gone").exists() and (root / "etc" / "keep").read_text() == "k"
    assert not list(root.rglob(".wh.*"))
