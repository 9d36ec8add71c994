"""Image mode build with real buildah: a small bootable tree imported as the base image, a Containerfile on
top of it, the OCI archive's digests, layers, labels and packages (real dpkg-query on the image's database),
and a Containerfile that does not build (exit 1 naming the failing step and its line).

Helpers here (base_archive, write_image_source) are imported by the other test_imagemode_* integration tests.
"""

from __future__ import annotations

import json
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeci.errors import EXIT_FAILED
from edgeci.imagemode import build
from edgeci.oci import ArchiveReader
from edgeci.tools import buildah
from edgeci.tools.run import have

pytestmark = pytest.mark.skipif(not (have("buildah") and have("dpkg-query")),
                                reason="buildah and dpkg-query are required")

BASE_NAME = "localhost/edgeci-test-base:1"
DPKG_STATUS = (
    "Package: busybox\nStatus: install ok installed\nMaintainer: t <t@example.com>\nArchitecture: amd64\n"
    "Version: 1:1.35.0-4+b3\nDescription: tiny utilities\n\n"
    "Package: ostree\nStatus: install ok installed\nMaintainer: t <t@example.com>\nArchitecture: amd64\n"
    "Version: 2022.7-2\nDescription: content-addressed filesystem\n\n"
    "Package: removed-thing\nStatus: deinstall ok config-files\nMaintainer: t <t@example.com>\n"
    "Architecture: amd64\nVersion: 0.1-1\nDescription: gone\n\n"
)


def write_rootfs_tar(dest: Path, tmp: Path) -> None:
    """A tiny bootable-looking tree: busybox as /usr/bin/sh, os-release, a kernel stand-in, a dpkg database."""
    root = tmp / "rootfs"
    (root / "usr" / "bin").mkdir(parents=True)
    shutil.copy2(shutil.which("busybox") or "/bin/busybox", root / "usr" / "bin" / "busybox")
    for tool in ("sh", "cat", "echo", "ls", "mkdir"):
        (root / "usr" / "bin" / tool).symlink_to("busybox")
    (root / "bin").symlink_to("usr/bin")
    (root / "usr" / "lib" / "modules" / "6.1.0-test").mkdir(parents=True)
    (root / "usr" / "lib" / "modules" / "6.1.0-test" / "vmlinuz").write_bytes(b"\x7fkernel stand-in\n" * 64)
    (root / "usr" / "lib" / "os-release").write_text('NAME="edgeci test"\nID=edgetest\nVERSION_ID="1"\n')
    (root / "etc").mkdir()
    (root / "etc" / "os-release").symlink_to("../usr/lib/os-release")
    (root / "var" / "lib" / "dpkg").mkdir(parents=True)
    (root / "var" / "lib" / "dpkg" / "status").write_text(DPKG_STATUS)
    with tarfile.open(dest, "w") as tar:
        tar.add(root, arcname=".")


@pytest.fixture(scope="session")
def base_archive() -> Iterator[Path]:
    """The base image as an OCI archive (FROM scratch + ADD rootfs.tar), built once in its own storage."""
    if not (have("buildah") and (have("busybox") or Path("/bin/busybox").exists())):
        pytest.skip("buildah and busybox are required")
    tmp = Path(tempfile.mkdtemp(prefix="edgeci-base-"))
    try:
        write_rootfs_tar(tmp / "rootfs.tar", tmp)
        (tmp / "Containerfile").write_text("FROM scratch\nADD rootfs.tar /\n"
                                           "LABEL containers.bootc=1 ostree.bootable=1\n")
        with build.private_storage(tmp) as st:
            r = buildah.bud(st, tmp / "Containerfile", tmp, BASE_NAME)
            assert r.ok, r.stderr
            buildah.push(st, BASE_NAME, f"oci-archive:{tmp / 'base.tar'}")
        yield tmp / "base.tar"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def storage(tmp_path: Path, base_archive: Path) -> Iterator[buildah.Storage]:
    """A private buildah store holding the imported base image; removed afterwards."""
    with build.private_storage(tmp_path) as st:
        build.import_base(st, base_archive, BASE_NAME)
        yield st


def write_image_source(blueprints: Path, name: str, version: str, *, extra_run: str = "") -> Path:
    """blueprints/NAME/Containerfile (+ checks.yaml and a config file it COPYs); returns the Containerfile."""
    d = blueprints / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "gateway.conf").write_text(f"listen = 0.0.0.0:8443\nrelease = {version}\n")
    (d / "checks.yaml").write_text("checks:\n  - file_exists: /etc/gateway/gateway.conf\n")
    cf = d / "Containerfile"
    cf.write_text(
        f"FROM {BASE_NAME}\n"
        "COPY gateway.conf /etc/gateway/gateway.conf\n"
        f"RUN mkdir -p /usr/share/gateway && echo {version} > /usr/share/gateway/release{extra_run}\n"
        f"LABEL org.opencontainers.image.version={version} \\\n"
        "      org.opencontainers.image.title=gateway\n"
    )
    return cf


def test_build_records_digests_layers_labels_packages(tmp_path: Path, storage: buildah.Storage) -> None:
    cf = write_image_source(tmp_path / "blueprints", "gateway", "1.0.0")
    out = tmp_path / "build" / "gateway.oci.tar"
    img = build.build_image(cf, out, storage=storage, name="gateway", pull="never")

    with ArchiveReader(out) as reader:
        archived = reader.image()
    assert img.digest == archived.digest
    assert [layer.digest for layer in img.layers] == [str(d["digest"]) for d in archived.layers]
    assert len(img.layers) == 2  # the base's layer, then one layer for this build's steps (buildah's default)
    assert img.layers[0].size == archived.layers[0]["size"] and img.size == sum(d["size"] for d in archived.layers)
    assert img.version == "1.0.0"
    assert img.labels["containers.bootc"] == "1" and img.labels["ostree.bootable"] == "1"
    assert img.labels["org.opencontainers.image.title"] == "gateway"
    # The base as buildah resolved it: the imported image's digest in the build storage.
    assert img.base_name == BASE_NAME
    assert img.base_digest.startswith("sha256:") and len(img.base_digest) == 71
    assert img.package_db == "dpkg"
    assert img.packages == [{"name": "busybox", "version": "1:1.35.0-4+b3", "arch": "amd64"},
                            {"name": "ostree", "version": "2022.7-2", "arch": "amd64"}]
    assert img.bootc_lint == build.NO_BOOTC
    assert "STEP 3/6: RUN mkdir" in img.log.read_text()  # 4 instructions, then the 2 bootc labels
    rec = img.as_dict()
    assert json.loads(json.dumps(rec))["layers"][1]["digest"] == img.layers[1].digest


def test_base_digest_matches_the_imported_base(tmp_path: Path, storage: buildah.Storage) -> None:
    cf = write_image_source(tmp_path / "blueprints", "gateway", "1.0.0")
    img = build.build_image(cf, tmp_path / "a.tar", storage=storage, name="gateway", pull="never")
    # buildah's own view of the base image's manifest digest in this store
    manifest_digest = buildah.inspect(storage, BASE_NAME).get("FromImageDigest")
    assert img.base_digest == manifest_digest


def test_update_bytes_are_the_changed_layers_only(tmp_path: Path, storage: buildah.Storage) -> None:
    bps = tmp_path / "blueprints"
    one = build.build_image(write_image_source(bps, "gateway", "1.0.0"), tmp_path / "1.tar", storage=storage,
                            name="gateway", pull="never")
    two = build.build_image(write_image_source(bps, "gateway", "1.0.1"), tmp_path / "2.tar", storage=storage,
                            name="gateway", pull="never")
    assert one.digest != two.digest
    assert one.layers[0].digest == two.layers[0].digest  # the base layer is shared
    changed = build.update_bytes(one.layers, two.layers)
    assert changed == two.layers[1].size
    assert changed < two.size // 10  # the busybox base layer is not downloaded again


def test_a_containerfile_that_does_not_build_names_the_step_and_line(tmp_path: Path,
                                                                    storage: buildah.Storage) -> None:
    cf = write_image_source(tmp_path / "blueprints", "gateway", "1.0.0", extra_run=" && ls /no/such/dir")
    with pytest.raises(build.ImageBuildFailed) as e:
        build.build_image(cf, tmp_path / "x.tar", storage=storage, name="gateway", pull="never")
    err = e.value
    assert err.exit_code == EXIT_FAILED
    assert err.where == f"{cf}:3"
    assert "ls /no/such/dir" in err.step and "exit status 1" in err.message
    assert "No such file or directory" in Path(tmp_path / "x.tar.build.log").read_text()
    assert not (tmp_path / "x.tar").exists()


def test_a_missing_base_fails_at_from(tmp_path: Path, storage: buildah.Storage) -> None:
    d = tmp_path / "bp"
    d.mkdir()
    (d / "Containerfile").write_text("# a comment\nFROM localhost/no-such-base:1\nLABEL version=1.0.0\n")
    with pytest.raises(build.ImageBuildFailed) as e:
        build.build_image(d / "Containerfile", tmp_path / "x.tar", storage=storage, name="x", pull="never")
    assert e.value.where == f"{d / 'Containerfile'}:2"
    assert "image not known" in e.value.message
