"""Image mode promotion with real skopeo, gnupg and docker-registry: the tested digest (not the stage tag's
current target) reaches production with its signatures, the production tag moves last, versions only go up,
and a production tag moved by someone else since the gate is refused naming both digests. A device with the
generated policy (signatures made for the stage repository, remapped) takes the promoted image.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeci.errors import EXIT_FAILED, PromotionRefused
from edgeci.imagemode import release as promote
from edgeci.imagemode import sign
from tests.fixtures.promote import GpgKeys
from tests.fixtures.registry import Registry
from tests.integration import test_imagemode_sign as ts

base_archive = ts.base_archive
built_images = ts.built_images


def test_promote_by_digest_with_signatures(tmp_path: Path, registry: Registry, promote_gpg: GpgKeys,
                                           built_images: ts.Built) -> None:
    one, two = built_images.one, built_images.two
    st = ts.push_signed_stage(tmp_path, registry, promote_gpg, [one, two])
    ep, stage, prod, rd, sigstore = st.endpoint, st.stage, st.prod, st.registries_d, st.sigstore
    # The stage tag moved on to 1.0.1 after 1.0.0 was tested: promotion takes the tested digest.
    sign.copy(f"docker://{stage}@{two.digest}", f"docker://{stage}:stage", src_endpoint=ep, dest_endpoint=ep,
              registries_d=rd)
    log = tmp_path / "releases.json"
    p1 = promote.promote(digest=one.digest, version="1.0.0", stage_repo=stage, prod_repo=prod, prod_tag="stable",
                         expected_previous=None, releases_log=log, registries_d=rd, stage_endpoint=ep,
                         prod_endpoint=ep)
    assert p1.previous is None
    assert promote.current_digest(f"docker://{prod}:stable", ep) == one.digest
    assert promote.current_digest(f"docker://{prod}:1.0.0", ep) == one.digest
    # The stage's signature travelled along (the lookaside store now has it under the production repository).
    assert list((sigstore / f"prod/gateway@sha256={one.digest[7:]}").glob("signature-*"))

    # A device trusting the key, with signatures made for the stage repository remapped onto production.
    device = tmp_path / "device"
    sign.write_device_config(device, prod_repo=prod, signed_repo=stage, lookaside_url=sigstore.as_uri(),
                             public_key=promote_gpg.public.read_text(), device_root=str(device))
    assert ts.device_pull(registry, f"docker://{prod}@{one.digest}", device, tmp_path / "d1").digest == one.digest

    p2 = promote.promote(digest=two.digest, version="1.0.1", stage_repo=stage, prod_repo=prod, prod_tag="stable",
                         expected_previous=one.digest, releases_log=log, registries_d=rd, stage_endpoint=ep,
                         prod_endpoint=ep)
    assert p2.previous == one.digest
    releases = json.loads(log.read_text())
    assert [(r["version"], r["digest"], r["previous"]) for r in releases] == [
        ("1.0.0", one.digest, None), ("1.0.1", two.digest, one.digest)]

    # Anti-rollback: 1.0.0 again is refused, production unchanged.
    with pytest.raises(PromotionRefused, match=r"not above production's 1\.0\.1") as e:
        promote.promote(digest=one.digest, version="1.0.0", stage_repo=stage, prod_repo=prod, prod_tag="stable",
                        expected_previous=two.digest, releases_log=log, registries_d=rd, stage_endpoint=ep,
                        prod_endpoint=ep)
    assert e.value.exit_code == EXIT_FAILED
    assert promote.current_digest(f"docker://{prod}:stable", ep) == two.digest

    # Someone moves the production tag back to 1.0.0 by hand after the gate saw 1.0.1.
    sign.copy(f"docker://{prod}@{one.digest}", f"docker://{prod}:stable", src_endpoint=ep, dest_endpoint=ep,
              registries_d=rd)
    with pytest.raises(PromotionRefused) as e:
        promote.promote(digest=two.digest, version="1.0.2", stage_repo=stage, prod_repo=prod, prod_tag="stable",
                        expected_previous=two.digest, releases_log=log, registries_d=rd, stage_endpoint=ep,
                        prod_endpoint=ep)
    msg = str(e.value)
    assert "\n" not in msg and one.digest in msg and two.digest in msg and "moved it since the gate" in msg
    assert promote.current_digest(f"docker://{prod}:1.0.2", ep) is None  # nothing was copied
    assert len(json.loads(log.read_text())) == 2


def test_an_unsigned_stage_image_promoted_is_refused_by_the_device(tmp_path: Path, registry: Registry,
                                                                 promote_gpg: GpgKeys,
                                                                 built_images: ts.Built) -> None:
    one = built_images.one
    ep = ts.endpoint(registry)
    stage, prod = f"{registry.host}/stage/gw2", f"{registry.host}/prod/gw2"
    sign.copy(f"oci-archive:{one.archive}", f"docker://{stage}:1.0.0", dest_endpoint=ep)  # never signed
    sigstore = tmp_path / "sigstore"
    rd = sign.write_registries_d(tmp_path / "ci.d", {
        r: sign.registries_d_entry(lookaside=sigstore.as_uri(), lookaside_staging=sigstore.as_uri())
        for r in (stage, prod)}).parent
    promote.promote(digest=one.digest, version="1.0.0", stage_repo=stage, prod_repo=prod, prod_tag="stable",
                    expected_previous=None, releases_log=tmp_path / "r.json", registries_d=rd, stage_endpoint=ep,
                    prod_endpoint=ep)
    device = tmp_path / "device"
    sign.write_device_config(device, prod_repo=prod, signed_repo=stage, lookaside_url=sigstore.as_uri(),
                             public_key=promote_gpg.public.read_text(), device_root=str(device))
    with pytest.raises(ts.RegistryError, match="signature policy refused"):
        ts.device_pull(registry, f"docker://{prod}:stable", device, tmp_path / "d")
