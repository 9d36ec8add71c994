"""`edgeci stage serve|stop|wait` with real ostree, skopeo and docker-registry.

serve extracts the repo (from the archive, the oci: push or the registry image by digest) and a
real `ostree pull` from the served URL gets the record's commit; wait passes when the expected
commit appears and fails naming both checksums when it does not; disk full leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from edgeci.errors import StageError
from edgeci.reposerver import RepoServer, server_info, serving
from edgeci.stagehost import fetch_ref
from edgeci.tools import ostree
from edgeci.tools.run import have
from tests.fixtures.promote import alive
from tests.fixtures.registry import EdgeProject, Registry, free_port, make_edge_project


def pull(tmp: Path, url: str, ref: str) -> str:
    """A real client: ostree pull REF from URL into a fresh repo; returns the pulled checksum."""
    client = tmp / f"client-{time.monotonic_ns()}"
    ostree.init(client, mode="archive")
    ostree.remote_add(client, "stage", url)
    ostree.pull(client, "stage", [ref], timeout=120)
    checksum = ostree.rev_parse(client, f"stage:{ref}")
    assert checksum is not None
    ostree.fsck(client)
    return checksum


def test_serve_then_a_real_ostree_pull_gets_the_commit_then_stop(edge_project: EdgeProject, tmp_path: Path) -> None:
    r = edge_project.cli("stage", "serve", "edge")
    assert r.returncode == 0, r.stderr
    stage = edge_project.load_record()["sections"]["stage"]
    assert stage["status"] == "passed" and stage["mode"] == "serve"
    assert stage["commit"] == edge_project.commit
    assert stage["url"].startswith("http://127.0.0.1:")
    assert alive(stage["pid"])
    assert pull(tmp_path, stage["url"], edge_project.ref) == edge_project.commit
    # files only from the repo: no listings, nothing above it
    for path in ("/", "/../../../edgeci.yaml", "/objects/"):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(stage["url"] + path, timeout=5)
        assert err.value.code == 404
    report = (edge_project.root / "reports" / "stage-edge-x86_64.xml").read_text()
    for case in ("verify layers", "extract", "commit in image", "serve", "served commit"):
        assert f'name="{case}"' in report

    r = edge_project.cli("stage", "stop", "edge")
    assert r.returncode == 0 and f"pid {stage['pid']}" in r.stdout
    assert not alive(stage["pid"])
    with pytest.raises(StageError, match="unreachable"):
        fetch_ref(stage["url"], edge_project.ref, timeout=2)
    r = edge_project.cli("stage", "stop", "edge")
    assert r.returncode == 0 and "no stage server running" in r.stdout


def test_serving_again_replaces_the_running_server(edge_project: EdgeProject) -> None:
    assert edge_project.cli("stage", "serve", "edge").returncode == 0
    first = edge_project.load_record()["sections"]["stage"]
    r = edge_project.cli("stage", "serve", "edge")
    assert r.returncode == 0, r.stderr
    second = edge_project.load_record()["sections"]["stage"]
    assert f"stopped the previous stage server (pid {first['pid']})" in r.stdout
    assert not alive(first["pid"]) and alive(second["pid"])
    assert fetch_ref(second["url"], edge_project.ref) == edge_project.commit


def test_serve_from_the_default_oci_push(edge_project: EdgeProject, tmp_path: Path) -> None:
    assert edge_project.cli("push", "edge").returncode == 0
    r = edge_project.cli("stage", "serve", "edge")
    assert r.returncode == 0, r.stderr
    sections = edge_project.load_record()["sections"]
    report = (edge_project.root / "reports" / "stage-edge-x86_64.xml").read_text()
    assert sections["push"]["image_ref"] in report  # staged from the pushed image, by digest
    assert pull(tmp_path, sections["stage"]["url"], edge_project.ref) == edge_project.commit


def test_serve_from_the_registry_image_by_digest(edge_project: EdgeProject, registry: Registry,
                                                 tmp_path: Path) -> None:
    edge_project.write_config(registry={"image": f"docker://{registry.host}/edge/{{blueprint}}", "tls_verify": False})
    assert edge_project.cli("push", "edge", env=registry.env).returncode == 0
    push = edge_project.load_record()["sections"]["push"]
    # remove the local archive: the repo can only come from the registry now
    edge_project.archive.unlink()
    r = edge_project.cli("stage", "serve", "edge", env=registry.env)
    assert r.returncode == 0, r.stderr
    stage = edge_project.load_record()["sections"]["stage"]
    report = (edge_project.root / "reports" / "stage-edge-x86_64.xml").read_text()
    assert push["image_ref"] in report
    assert registry.password not in report + r.stdout + r.stderr
    assert pull(tmp_path, stage["url"], edge_project.ref) == edge_project.commit
    assert not list(Path(stage["dir"]).glob(".pull-*"))  # the pulled copy is cleaned up


def test_a_record_expecting_another_commit_fails_naming_both(edge_project: EdgeProject) -> None:
    from edgeci.record import BuildRecord

    other = "f" * 64
    rec = BuildRecord.load(edge_project.record)
    rec.sections["compose"]["commit"] = other
    rec.save()
    r = edge_project.cli("stage", "serve", "edge")
    assert r.returncode == 1
    assert other in r.stderr and edge_project.commit in r.stderr
    assert "stage" not in edge_project.load_record()["sections"]
    assert server_info(edge_project.root / "build" / "stage" / "edge") is None


def test_an_archive_over_the_size_bound_is_refused_before_extraction(edge_project: EdgeProject) -> None:
    r = edge_project.cli("stage", "serve", "edge", "--set", "stage.max_archive_bytes=4096")
    assert r.returncode == 2
    assert "larger than stage.max_archive_bytes (4.0 KiB)" in r.stderr
    stage_dir = edge_project.root / "build" / "stage" / "edge"
    assert not stage_dir.exists() or not any(stage_dir.iterdir())


def test_an_archive_changed_since_compose_is_not_staged(edge_project: EdgeProject) -> None:
    with open(edge_project.archive, "ab") as f:
        f.write(b"\0" * 1024)
    r = edge_project.cli("stage", "serve", "edge")
    assert r.returncode == 2
    assert "does not match the sha256 in the build record" in r.stderr
    assert not (edge_project.root / "build" / "stage" / "edge" / "usr").exists()


def test_stage_server_context_manager_serves_and_always_stops(edge_project: EdgeProject, tmp_path: Path) -> None:
    with RepoServer(edge_project.repo, state_dir=tmp_path / "state") as server:
        pid = server.pid
        assert alive(pid)
        assert (tmp_path / "state" / "stageserver.json").is_file()
        assert fetch_ref(server.url, edge_project.ref) == edge_project.commit
        assert pull(tmp_path, server.url, edge_project.ref) == edge_project.commit
    assert not alive(pid)
    assert not (tmp_path / "state" / "stageserver.json").exists()
    with pytest.raises(RuntimeError), serving(edge_project.repo) as server:
        pid = server.pid
        raise RuntimeError("a failing test body")
    assert not alive(pid)


def test_a_busy_port_is_one_clear_error(edge_project: EdgeProject) -> None:
    with serving(edge_project.repo) as first:
        with pytest.raises(StageError, match="cannot listen") as err:
            RepoServer(edge_project.repo, port=first.port).start()
        assert "\n" not in str(err.value)


# -- stage wait -------------------------------------------------------------------------------------

@pytest.fixture
def stage_host(edge_project: EdgeProject, tmp_path: Path) -> tuple[Path, str]:
    """A copy of the candidate's repo whose ref points at an older, different commit (the stage
    host before podman auto-update pulled the new image); returns (repo, that other checksum)."""
    repo = tmp_path / "stage-host-repo"
    shutil.copytree(edge_project.repo, repo)
    tree = tmp_path / "old-tree"
    (tree / "usr" / "etc").mkdir(parents=True)
    (tree / "usr" / "etc" / "hostname").write_text("old\n")
    other = ostree.commit(repo, edge_project.ref, tree_dir=tree, subject="older", parent="none")
    return repo, other


def test_wait_passes_when_the_expected_commit_appears(edge_project: EdgeProject,
                                                      stage_host: tuple[Path, str]) -> None:
    repo, other = stage_host
    with serving(repo) as server:
        timer = threading.Timer(1.5, ostree.set_ref, (repo, edge_project.ref, edge_project.commit))
        timer.start()
        try:
            r = edge_project.cli("stage", "wait", "edge", "--url", server.url, "--deadline", "30")
        finally:
            timer.cancel()
    assert r.returncode == 0, r.stderr
    assert r.stdout.count(f"serves {other}") == 1  # one progress line per change, not per poll
    stage = edge_project.load_record()["sections"]["stage"]
    assert stage == {**stage, "mode": "wait", "commit": edge_project.commit, "url": server.url, "status": "passed"}


def test_wait_fails_at_the_deadline_naming_both_checksums(edge_project: EdgeProject,
                                                          stage_host: tuple[Path, str]) -> None:
    repo, other = stage_host
    with serving(repo) as server:
        r = edge_project.cli("stage", "wait", "edge", "--url", server.url, "--deadline", "1")
    assert r.returncode == 1
    line = r.stderr.strip()
    assert "\n" not in line
    assert f"serves {other}, expected {edge_project.commit}" in line
    report = (edge_project.root / "reports" / "stage-edge-x86_64.xml").read_text()
    assert "<failure" in report and other in report
    assert "stage" not in edge_project.load_record()["sections"]


def test_wait_on_an_unreachable_stage_says_so(edge_project: EdgeProject) -> None:
    url = f"http://127.0.0.1:{free_port()}/repo"
    r = edge_project.cli("stage", "wait", "edge", "--url", url, "--deadline", "0.5")
    assert r.returncode == 2
    assert "stage unreachable" in r.stderr and url in r.stderr


def test_wait_without_a_url_is_a_config_error(edge_project: EdgeProject) -> None:
    r = edge_project.cli("stage", "wait", "edge")
    assert r.returncode == 2
    assert "stage.url is empty" in r.stderr


# -- disk full ----------------------------------------------------------------------------------------

@pytest.mark.skipif(not have("unshare"), reason="util-linux unshare is required")
def test_disk_full_while_extracting_is_clean(tmp_path: Path) -> None:
    """The stage dir on a 256 KiB tmpfs (a private mount in a user namespace); the repo holds 1 MiB."""
    if not have("ostree"):
        pytest.skip("ostree is required")
    project = make_edge_project(tmp_path, extra={"usr/share/data.bin": os.urandom(1 << 20)})
    mnt = project.root / "build" / "stage"
    mnt.mkdir(parents=True)
    script = (f"mount -t tmpfs -o size=256k tmpfs {mnt} || exit 99; "
              f"{sys.executable} -m edgeci -c {project.config} stage serve edge; echo rc=$?; "
              f"ls -A {mnt}/edge; echo end")
    proc = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
                          cwd=project.root, capture_output=True, text=True, timeout=120, check=False)
    if "rc=" not in proc.stdout:
        pytest.skip(f"cannot mount a tmpfs in a user namespace here: {proc.stderr.strip()}")
    assert "rc=2" in proc.stdout, proc.stdout + proc.stderr
    assert "disk full while extracting the stage repository" in proc.stderr
    assert proc.stderr.strip().count("\n") == 0
    listing = proc.stdout.split("rc=2", 1)[1].replace("end", "").split()
    assert listing == []  # the partial .extract- dir is gone, nothing half-written
    assert not any(mnt.iterdir())  # and outside the namespace nothing was written at all


# -- the local composer's real edge-container ------------------------------------------------------

@pytest.mark.slow
def test_push_and_serve_the_local_composers_image(request: pytest.FixtureRequest, registry: Registry,
                                                  tmp_path: Path) -> None:
    """compose (local composer) → push to the registry → stage serve by digest → ostree pull."""
    import json

    from edgeci.cli import COMMANDS
    from edgeci.reposerver import stop_server
    from tests.fixtures.composed import edgeci_cli

    if "compose" not in COMMANDS:
        pytest.skip("'edgeci compose' is not registered yet")
    project = request.getfixturevalue("composed_gateway_copy")
    (project.dir / "edgeci.yaml").write_text(
        f"registry:\n  image: docker://{registry.host}/edge/{{blueprint}}\n  tls_verify: false\n")
    try:
        for args in (["push", "gateway"], ["stage", "serve", "gateway"]):
            r = edgeci_cli(args, cwd=project.dir, env=registry.env)
            assert r.returncode == 0, f"{args}: {r.stdout}\n{r.stderr}"
            assert registry.password not in r.stdout + r.stderr
        sections = json.loads(project.record.read_text())["sections"]
        assert sections["stage"]["commit"] == project.commit
        assert pull(tmp_path, sections["stage"]["url"], project.ref) == project.commit
    finally:
        stop_server(project.dir / "build" / "stage" / "gateway")
