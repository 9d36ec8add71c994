"""Safe extraction of the stage repository: hostile layers are refused and nothing lands outside the target."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
import uuid
from pathlib import Path

import pytest

from edgeci.errors import StageError
from edgeci.image import Budget, extract_layer, open_image, populate_from_image, populate_from_tar, verify_layers
from edgeci.oci import LAYER_TAR, LAYER_TAR_GZIP, MANIFEST_TYPE

PREFIX = "usr/share/nginx/html/repo"
TOO_BIG = r"larger than stage\.max_archive_bytes"


# -- building layers and images by hand ------------------------------------------------------------

def entry(name: str, *, data: bytes | None = None, kind: bytes = tarfile.REGTYPE, link: str = "",
          mode: int = 0o644, size: int | None = None) -> tuple[tarfile.TarInfo, bytes | None]:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.mode = mode
    ti.linkname = link
    if kind == tarfile.REGTYPE:
        data = data or b""
        ti.size = len(data) if size is None else size
    if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        ti.devmajor, ti.devminor = 1, 3
    return ti, data


def layer_bytes(*entries: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for ti, data in entries:
            tar.addfile(ti, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def repo_entries(prefix: str = PREFIX) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    """The bones of an archive-mode ostree repo under `prefix` (config + objects + a ref)."""
    out = [entry(d, kind=tarfile.DIRTYPE, mode=0o755) for d in
           ("usr", "usr/share", "usr/share/nginx", "usr/share/nginx/html")]
    out += [
        entry(prefix, kind=tarfile.DIRTYPE, mode=0o755),
        entry(f"{prefix}/config", data=b"[core]\nrepo_version=1\nmode=archive-z2\n"),
        entry(f"{prefix}/objects", kind=tarfile.DIRTYPE, mode=0o755),
        entry(f"{prefix}/objects/ab", kind=tarfile.DIRTYPE, mode=0o755),
        entry(f"{prefix}/objects/ab/cdef.filez", data=b"x" * 100),
        entry(f"{prefix}/refs/heads/rhel", kind=tarfile.DIRTYPE, mode=0o755),
        entry(f"{prefix}/refs/heads/rhel/edge", data=b"a" * 64 + b"\n"),
    ]
    return out


def write_image(path: Path, layers: list[bytes], *, gzip_layers: bool = False, tamper: int | None = None) -> str:
    """An OCI archive from raw layer tars (the writer in edgeci.oci only packs real directories)."""
    blobs: dict[str, bytes] = {}

    def put(data: bytes) -> str:
        d = hashlib.sha256(data).hexdigest()
        blobs[d] = data
        return "sha256:" + d

    descs, diff_ids = [], []
    for i, raw in enumerate(layers):
        diff_ids.append("sha256:" + hashlib.sha256(raw).hexdigest())
        stored = gzip.compress(raw, mtime=0) if gzip_layers else raw
        digest = put(stored)
        if tamper == i:  # the blob no longer matches the digest the manifest names
            blobs[digest[7:]] = stored[:-1] + bytes([stored[-1] ^ 1])
        descs.append({"mediaType": LAYER_TAR_GZIP if gzip_layers else LAYER_TAR, "digest": digest,
                      "size": len(stored)})
    config = put(json.dumps({"architecture": "amd64", "os": "linux",
                             "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode())
    manifest = put(json.dumps({"schemaVersion": 2, "mediaType": MANIFEST_TYPE,
                               "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                          "digest": config, "size": len(blobs[config[7:]])},
                               "layers": descs}).encode())
    index = {"schemaVersion": 2, "manifests": [{"mediaType": MANIFEST_TYPE, "digest": manifest,
                                                "size": len(blobs[manifest[7:]]),
                                                "annotations": {"org.opencontainers.image.ref.name": "1"}}]}
    with tarfile.open(path, "w") as tar:
        for name, data in [("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
                           ("index.json", json.dumps(index).encode()),
                           *((f"blobs/sha256/{d}", b) for d, b in blobs.items())]:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))
    return manifest


def snapshot(root: Path, exclude: Path) -> dict[str, tuple[int, str]]:
    """Every path below root except `exclude` (the extraction target), with type and content hash."""
    out: dict[str, tuple[int, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        if d == exclude or exclude in d.parents:
            dirnames[:] = []
            continue
        for n in dirnames + filenames:
            p = d / n
            if p == exclude:
                continue
            st = p.lstat()
            digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() and not p.is_symlink() else ""
            out[str(p.relative_to(root))] = (st.st_mode, digest)
    return out


@pytest.fixture
def sandbox(tmp_path: Path) -> tuple[Path, Path]:
    """(sandbox, target): the target three levels deep, so `../../..` still lands in the sandbox."""
    target = tmp_path / "a" / "b" / "stage"
    target.mkdir(parents=True)
    (tmp_path / "precious.txt").write_text("do not touch")
    (tmp_path / "a" / "sibling").mkdir()
    return tmp_path, target


def extract(target: Path, data: bytes, limit: int = 1 << 20) -> int:
    return extract_layer(io.BytesIO(data), target, prefix=PREFIX, budget=Budget(limit))


# -- a well-formed layer ----------------------------------------------------------------------------

def test_well_formed_layer_extracts_only_the_repo_with_internal_links(sandbox: tuple[Path, Path]) -> None:
    root, target = sandbox
    before = snapshot(root, target)
    data = layer_bytes(
        entry("etc", kind=tarfile.DIRTYPE, mode=0o755),
        entry("etc/localtime", kind=tarfile.SYMTYPE, link="/usr/share/zoneinfo/UTC"),  # outside the repo: skipped
        entry("etc/shadow", data=b"root:!:1::::::\n"),
        *repo_entries(),
        entry(f"{PREFIX}/objects/ab/alias.filez", kind=tarfile.SYMTYPE, link="cdef.filez"),
        entry(f"{PREFIX}/objects/ab/hard.filez", kind=tarfile.LNKTYPE, link=f"{PREFIX}/objects/ab/cdef.filez"),
        entry(f"{PREFIX}/setuid", data=b"#!", mode=0o4755),
    )
    assert extract(target, data) > 5
    repo = target / PREFIX
    assert (repo / "config").read_bytes().startswith(b"[core]")
    assert os.readlink(repo / "objects/ab/alias.filez") == "cdef.filez"
    assert (repo / "objects/ab/hard.filez").stat().st_ino == (repo / "objects/ab/cdef.filez").stat().st_ino
    assert (repo / "setuid").stat().st_mode & 0o7777 == 0o755  # no setuid bit from an image
    assert not (target / "etc").exists()
    assert snapshot(root, target) == before


def test_whiteouts_in_a_later_layer_remove_files(tmp_path: Path) -> None:
    extract(tmp_path, layer_bytes(*repo_entries(), entry(f"{PREFIX}/stale", data=b"old")))
    extract(tmp_path, layer_bytes(entry(f"{PREFIX}/.wh.stale", data=b"")))
    assert not (tmp_path / PREFIX / "stale").exists()
    extract(tmp_path, layer_bytes(entry(f"{PREFIX}/objects/.wh..wh..opq", data=b"")))
    assert (tmp_path / PREFIX / "objects").is_dir()
    assert list((tmp_path / PREFIX / "objects").iterdir()) == []


# -- hostile layers ---------------------------------------------------------------------------------

OUTSIDE = f"/tmp/edgeci-escape-{uuid.uuid4().hex}"

HOSTILE = {
    "traversal": ([entry(f"{PREFIX}/../../../../../precious.txt", data=b"pwned")], "escapes with '..'"),
    "traversal outside the prefix": ([entry("../../../evil", data=b"pwned")], "escapes with '..'"),
    "absolute path": ([entry(f"/{PREFIX}/config", data=b"pwned")], "absolute path"),
    "absolute path elsewhere": ([entry(OUTSIDE, data=b"pwned")], "absolute path"),
    "symlink to an absolute path": ([entry(f"{PREFIX}/objects", kind=tarfile.SYMTYPE, link=OUTSIDE)],
                                    "points outside the repository"),
    "symlink climbing out": ([entry(f"{PREFIX}/up", kind=tarfile.SYMTYPE, link="../../../../../..")],
                             "points outside the repository"),
    "symlink then write through it": ([entry(f"{PREFIX}/esc", kind=tarfile.SYMTYPE, link="../../../../../a"),
                                       entry(f"{PREFIX}/esc/sibling/x", data=b"pwned")],
                                      "points outside the repository"),
    "hardlink to a host file": ([entry(f"{PREFIX}/passwd", kind=tarfile.LNKTYPE, link="/etc/passwd")],
                                "hardlink"),
    "hardlink climbing out": ([entry(f"{PREFIX}/p", kind=tarfile.LNKTYPE,
                                     link=f"{PREFIX}/../../../../../precious.txt")], "hardlink"),
    "hardlink outside the repo": ([entry("etc/shadow", data=b"x"),
                                   entry(f"{PREFIX}/shadow", kind=tarfile.LNKTYPE, link="etc/shadow")],
                                  "hardlink"),
    "character device": ([entry(f"{PREFIX}/null", kind=tarfile.CHRTYPE)], "device node"),
    "block device": ([entry(f"{PREFIX}/sda", kind=tarfile.BLKTYPE)], "device node"),
    "fifo": ([entry(f"{PREFIX}/pipe", kind=tarfile.FIFOTYPE)], "fifo"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_layer_is_refused_and_nothing_is_written_outside(case: str, sandbox: tuple[Path, Path]) -> None:
    root, target = sandbox
    entries, expected = HOSTILE[case]
    before = snapshot(root, target)
    with pytest.raises(StageError) as err:
        extract(target, layer_bytes(*repo_entries(), *entries))
    assert expected in str(err.value)
    assert "\n" not in str(err.value)
    assert snapshot(root, target) == before
    assert (root / "precious.txt").read_text() == "do not touch"
    assert not os.path.lexists(OUTSIDE)


def test_oversize_layer_is_refused(tmp_path: Path) -> None:
    data = layer_bytes(*repo_entries(), entry(f"{PREFIX}/objects/ab/big.filez", data=b"z" * 5000))
    with pytest.raises(StageError, match=TOO_BIG):
        extract(tmp_path, data, limit=4000)
    assert not (tmp_path / PREFIX / "objects/ab/big.filez").exists()


def big_offset(data: bytes) -> int:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return int(tar.getmember(f"{PREFIX}/objects/ab/big.filez").offset_data)


def test_truncated_layer_is_a_clear_error(tmp_path: Path) -> None:
    data = layer_bytes(*repo_entries(), entry(f"{PREFIX}/objects/ab/big.filez", data=b"z" * 5000))
    with pytest.raises(StageError, match="not a valid tar archive"):
        extract(tmp_path, data[: big_offset(data) + 2000])  # cut inside the file's data


# -- whole images: digests first, then extraction --------------------------------------------------

def test_image_layers_are_verified_and_the_repo_lands_in_the_stage_dir(tmp_path: Path) -> None:
    base = layer_bytes(entry("etc", kind=tarfile.DIRTYPE), entry("etc/nginx.conf", data=b"listen 8080;"))
    archive = tmp_path / "image.tar"
    write_image(archive, [base, layer_bytes(*repo_entries())], gzip_layers=True)
    stage = tmp_path / "stage"
    with open_image(archive) as src:
        result = populate_from_image(src, stage, repo_path=PREFIX, max_bytes=1 << 20)
    assert result.repo == stage / PREFIX
    assert len(result.layers) == 2
    assert (stage / PREFIX / "refs/heads/rhel/edge").read_bytes().startswith(b"a" * 64)
    assert sorted(p.name for p in stage.iterdir()) == ["usr"]  # no temp dirs left behind


def test_tampered_layer_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    archive = tmp_path / "image.tar"
    write_image(archive, [layer_bytes(*repo_entries())], tamper=0)
    stage = tmp_path / "stage"
    with open_image(archive) as src, pytest.raises(StageError, match="does not match its digest"):
        populate_from_image(src, stage, repo_path=PREFIX, max_bytes=1 << 20)
    assert not stage.exists() or list(stage.iterdir()) == []


def test_diff_id_mismatch_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "image.tar"
    write_image(archive, [layer_bytes(*repo_entries())])
    # Rewrite the config's diff_id: the stored blob still matches, its content no longer does.
    with open_image(archive) as src:
        layers = src.layers
        src.config["rootfs"]["diff_ids"] = ["sha256:" + "0" * 64]
        with pytest.raises(StageError, match="does not match its diff_id"):
            verify_layers(src, Budget(1 << 20))
    assert layers


def test_hostile_image_leaves_the_previous_stage_untouched(tmp_path: Path) -> None:
    stage = tmp_path / "stage"
    good = tmp_path / "good.tar"
    write_image(good, [layer_bytes(*repo_entries())])
    with open_image(good) as src:
        populate_from_image(src, stage, repo_path=PREFIX, max_bytes=1 << 20)
    before = snapshot(tmp_path, tmp_path / "nothing")
    bad = tmp_path / "bad.tar"
    write_image(bad, [layer_bytes(*repo_entries(), entry(f"{PREFIX}/x", kind=tarfile.SYMTYPE, link="/etc"))])
    with open_image(bad) as src, pytest.raises(StageError, match="points outside"):
        populate_from_image(src, stage, repo_path=PREFIX, max_bytes=1 << 20)
    after = snapshot(tmp_path, tmp_path / "nothing")
    after.pop("bad.tar")
    assert after == before  # the served repo is unchanged and no .extract- dir is left


def test_archive_over_the_bound_is_refused_before_reading(tmp_path: Path) -> None:
    archive = tmp_path / "image.tar"
    write_image(archive, [layer_bytes(*repo_entries())])
    with pytest.raises(StageError, match=TOO_BIG):
        open_image(archive, max_bytes=1024)


def test_decompression_bomb_stops_at_the_bound(tmp_path: Path) -> None:
    archive = tmp_path / "image.tar"
    bomb = layer_bytes(*repo_entries(), entry(f"{PREFIX}/objects/ab/zeros", data=b"\0" * (8 << 20)))
    write_image(archive, [bomb], gzip_layers=True)
    assert archive.stat().st_size < 100_000
    stage = tmp_path / "stage"
    with open_image(archive, max_bytes=1 << 20) as src, \
            pytest.raises(StageError, match=TOO_BIG):
        populate_from_image(src, stage, repo_path=PREFIX, max_bytes=1 << 20)
    assert not (stage / "usr").exists()


def test_image_without_a_repo_is_a_clear_error(tmp_path: Path) -> None:
    archive = tmp_path / "image.tar"
    write_image(archive, [layer_bytes(entry("etc", kind=tarfile.DIRTYPE))])
    with open_image(archive) as src, pytest.raises(StageError, match="holds no ostree repository"):
        populate_from_image(src, tmp_path / "stage", repo_path=PREFIX, max_bytes=1 << 20)
    assert [p.name for p in (tmp_path / "stage").iterdir()] == []


def test_edge_commit_tar_is_checked_then_extracted(tmp_path: Path) -> None:
    tar = tmp_path / "commit.tar"
    tar.write_bytes(layer_bytes(*repo_entries("repo")))
    sha = hashlib.sha256(tar.read_bytes()).hexdigest()
    stage = tmp_path / "stage"
    with pytest.raises(StageError, match="does not match the sha256"):
        populate_from_tar(tar, stage, repo_path="repo", max_bytes=1 << 20, sha256="0" * 64)
    result = populate_from_tar(tar, stage, repo_path="repo", max_bytes=1 << 20, sha256=sha)
    assert (result.repo / "config").is_file()
