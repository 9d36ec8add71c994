"""The local composer with real tools: skopeo accepts its container archive, ostree fsck passes on
its repo, the commit deploys (ostree admin in a user namespace), parents chain, bad input fails
with one line and leaves no artifact."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import pytest

from edgeci.checks import load_checks
from edgeci.errors import BlueprintError
from edgeci.tools import ostree
from edgeci.tools.run import run
from tests.fixtures.composed import (
    ComposedProject,
    composed_blueprints_dir,
    deploy_commit,
    edgeci_cli,
    extract_container_repo,
)

ARCH_DIR = Path("build") / "gateway" / "x86_64"


def _artifacts(project: Path) -> list[Path]:
    d = project / ARCH_DIR
    return sorted(d.glob("*.tar")) + sorted(d.glob(".*")) if d.is_dir() else []


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("edgeci: error:")]
    assert len(errors) == 1, stderr
    assert "Traceback" not in stderr
    return errors[0]


def _new_project(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    shutil.copytree(composed_blueprints_dir(), project / "blueprints")
    return project


# -- the artifact ---------------------------------------------------------------------------------

def test_container_archive_is_accepted_by_skopeo(composed_gateway: ComposedProject) -> None:
    out = run(["skopeo", "inspect", f"oci-archive:{composed_gateway.artifact}"]).stdout
    assert json.loads(out)["Architecture"] == "amd64"
    config = json.loads(run(["skopeo", "inspect", "--config", f"oci-archive:{composed_gateway.artifact}"]).stdout)
    assert config["config"]["Entrypoint"] == ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h",
                                              "/usr/share/nginx/html"]
    assert config["config"]["ExposedPorts"] == {"8080/tcp": {}}
    assert composed_gateway.artifact.name.endswith("-container.tar")


def test_container_repo_passes_fsck_and_carries_the_blueprint_version(
        composed_gateway: ComposedProject, tmp_path: Path) -> None:
    repo = extract_container_repo(composed_gateway.artifact, tmp_path / "layer")
    assert (tmp_path / "layer" / "bin" / "busybox").is_file()
    ostree.fsck(repo)
    assert not ostree.is_partial(repo, composed_gateway.commit)
    assert ostree.rev_parse(repo, composed_gateway.ref) == composed_gateway.commit
    assert ostree.metadata(repo, composed_gateway.commit, "version") == composed_gateway.version == "1.0.0"
    assert ostree.metadata(repo, composed_gateway.commit, "edgeci.blueprint") == "gateway"
    assert ostree.parent(repo, composed_gateway.commit) is None  # first build: no parent
    files = set(ostree.ls(repo, composed_gateway.commit, "/", recursive=True))
    for path in ("/usr/sbin/init", "/usr/bin/busybox", "/usr/lib/os-release", "/usr/etc/passwd",
                 "/usr/etc/greenboot/check/required.d/01-hostname.sh"):
        assert path in files, path
    assert not any(p.startswith("/etc/") for p in files)  # ostree trees carry usr/etc only


def test_record_and_report(composed_gateway: ComposedProject) -> None:
    rec = json.loads(composed_gateway.record.read_text())["sections"]
    bp, compose = rec["blueprint"], rec["compose"]
    assert set(bp) >= {"name", "version", "path", "git_sha", "sha256"}
    assert bp["name"] == "gateway" and bp["status"] == "passed"
    assert set(compose) >= {"backend", "id", "type", "artifact", "artifact_sha256", "commit", "parent", "ref",
                            "url", "packages", "warnings"}
    assert compose["backend"] == "local" and compose["type"] == "edge-container"
    assert compose["os"] == "busybox"  # the suite's OS (tests/conftest.py); boot-test's auto backend follows it
    from edgeci.oci import sha256_file

    assert compose["artifact_sha256"] == sha256_file(composed_gateway.artifact)
    names = {p["name"] for p in compose["packages"]}
    assert "busybox-static" in names and any(n.startswith("linux-image-") for n in names)
    assert any("podman" in w and "packages" in w for w in compose["warnings"])  # never silently dropped
    report = (composed_gateway.dir / "reports" / "compose-gateway-x86_64.xml").read_text()
    assert 'classname="edgeci.compose.gateway.x86_64"' in report and "<failure" not in report


def test_commit_deploys_and_its_tree_passes_the_static_checks(
        composed_gateway: ComposedProject, tmp_path: Path) -> None:
    from edgeci.checks import evaluate_in_tree

    repo = extract_container_repo(composed_gateway.artifact, tmp_path / "layer")
    deployment = deploy_commit(repo, composed_gateway.ref, tmp_path / "sysroot")
    assert deployment.name.startswith(composed_gateway.commit + ".")
    entries = list((tmp_path / "sysroot" / "boot" / "loader" / "entries").glob("*.conf"))
    assert len(entries) == 1
    text = entries[0].read_text()
    assert "ostree=/ostree/boot." in text and "vmlinuz-" in text and "initramfs-" in text
    assert (deployment / "etc" / "os-release").read_text() if (deployment / "etc" / "os-release").exists() else True
    assert "VERSION=1.0.0" in (deployment / "usr" / "lib" / "os-release").read_text()
    checks = load_checks(composed_blueprints_dir() / "gateway.checks.yaml")
    for check in checks.checks:
        if check.kind in ("command", "script"):
            continue
        ok, output = evaluate_in_tree(check, deployment, "1.0.0", booted_commit=composed_gateway.commit)
        assert ok, f"{check.name}: {output}"
    assert (deployment / "etc" / "greenboot" / "check" / "required.d").is_dir()


def test_second_compose_with_the_first_as_parent_is_a_child_commit(
        composed_gateway_copy: ComposedProject, tmp_path: Path) -> None:
    project = composed_gateway_copy
    r = edgeci_cli(["compose", "gateway", "--parent", project.commit], cwd=project.dir)
    assert r.returncode == 0, r.stderr
    compose = json.loads(project.record.read_text())["sections"]["compose"]
    assert compose["parent"] == project.commit and compose["commit"] != project.commit
    repo = extract_container_repo(project.dir / compose["artifact"], tmp_path / "layer")
    assert ostree.parent(repo, compose["commit"]) == project.commit
    ostree.fsck(repo)


def test_parent_is_the_ref_tip_at_the_url(composed_gateway_copy: ComposedProject, tmp_path: Path) -> None:
    project = composed_gateway_copy
    prod = extract_container_repo(project.artifact, tmp_path / "prod")
    r = edgeci_cli(["compose", "gateway", "--type", "edge-commit", "--url", f"file://{prod}"], cwd=project.dir)
    assert r.returncode == 0, r.stderr
    compose = json.loads(project.record.read_text())["sections"]["compose"]
    assert compose["parent"] == project.commit and compose["type"] == "edge-commit"
    artifact = project.dir / compose["artifact"]
    assert artifact.name.endswith("-commit.tar")
    with tarfile.open(artifact) as tar:
        names = tar.getnames()
        assert "compose.json" in names and any(n.startswith("repo/objects/") for n in names)
        meta = json.loads(tar.extractfile("compose.json").read())  # type: ignore[union-attr]
        tar.extractall(tmp_path / "commit", filter="tar")
    assert meta == {"ref": project.ref, "ostree-commit": compose["commit"]}
    repo = tmp_path / "commit" / "repo"
    ostree.fsck(repo)
    assert ostree.parent(repo, compose["commit"]) == project.commit


# -- bad input: one line, the documented exit code, nothing half-written -----------------------------

def test_unknown_blueprint(tmp_path: Path) -> None:
    project = _new_project(tmp_path)
    r = edgeci_cli(["compose", "nosuch"], cwd=project)
    assert r.returncode == 2
    line = _one_error_line(r.stderr)
    assert "no blueprint 'nosuch'" in line and "gateway" in line
    assert not (project / "build").exists()


def test_blueprint_failing_lint(tmp_path: Path) -> None:
    project = _new_project(tmp_path)
    bp = project / "blueprints" / "gateway.toml"
    bp.write_text(bp.read_text().replace('hostname = "gateway"', 'hostname = "gateway"\nhostnam = "typo"'))
    r = edgeci_cli(["compose", "gateway"], cwd=project)
    assert r.returncode == 2
    line = _one_error_line(r.stderr)
    assert "blueprint fails lint" in line and "edgeci lint" in line and "gateway.toml:" in line
    assert not _artifacts(project)


def test_bad_checks_file_names_file_and_line(tmp_path: Path) -> None:
    project = _new_project(tmp_path)
    checks = project / "blueprints" / "gateway.checks.yaml"
    checks.write_text("checks:\n  - name: x\n    file_exist: /etc/motd\n")
    r = edgeci_cli(["compose", "gateway"], cwd=project)
    assert r.returncode == 2
    line = _one_error_line(r.stderr)
    assert "gateway.checks.yaml:3" in line and "did you mean 'file_exists'" in line.lower()
    assert not _artifacts(project)


def test_unwritable_build_dir(tmp_path: Path) -> None:
    project = _new_project(tmp_path)
    (project / "build").write_text("not a directory\n")  # root ignores permission bits; a file does not
    r = edgeci_cli(["compose", "gateway"], cwd=project)
    assert r.returncode == 2
    line = _one_error_line(r.stderr)
    assert "cannot write the build directory" in line and "build" in line


def test_corrupt_kernel_cache_is_detected_and_rebuilt(tmp_path: Path, kernel_cache) -> None:  # type: ignore[no-untyped-def]
    project = _new_project(tmp_path)
    cache = tmp_path / "cache"
    shutil.copytree(kernel_cache.vmlinuz.parent, cache / "kernel")
    with open(cache / "kernel" / "vmlinuz", "r+b") as f:
        f.truncate(1000)  # an interrupted copy
    r = edgeci_cli(["compose", "gateway"], cwd=project, env={"EDGECI_COMPOSER_CACHE_DIR": str(cache)})
    assert r.returncode == 0, r.stderr
    rebuilt = [line for line in r.stderr.splitlines() if "kernel cache" in line]
    assert len(rebuilt) == 1 and "vmlinuz does not match its sha256" in rebuilt[0] and "rebuilt" in rebuilt[0]
    from edgeci.testos.kernel import verify_cache

    assert verify_cache(cache / "kernel")[0] is not None


def test_corrupt_kernel_cache_that_cannot_be_rebuilt(tmp_path: Path, kernel_cache) -> None:  # type: ignore[no-untyped-def]
    project = _new_project(tmp_path)
    cache = tmp_path / "cache"
    shutil.copytree(kernel_cache.vmlinuz.parent, cache / "kernel")
    (cache / "kernel" / "manifest.json").unlink()  # a partial cache
    lists = tmp_path / "empty-lists"
    (lists / "partial").mkdir(parents=True)
    apt_conf = tmp_path / "apt.conf"
    apt_conf.write_text(f'Dir::State::Lists "{lists}";\nDir::Cache "{tmp_path / "apt-cache"}";\n')
    r = edgeci_cli(["compose", "gateway"], cwd=project,
                   env={"EDGECI_COMPOSER_CACHE_DIR": str(cache), "APT_CONFIG": str(apt_conf)})
    assert r.returncode == 2
    line = _one_error_line(r.stderr)
    assert "cannot resolve the kernel package" in line and "apt-get update" in line
    assert not _artifacts(project)


def test_configured_kernel_that_is_not_a_kernel(tmp_path: Path) -> None:
    project = _new_project(tmp_path)
    bogus = tmp_path / "vmlinuz-6.1.0-bogus"
    bogus.write_text("not a kernel\n")
    r = edgeci_cli(["compose", "gateway"], cwd=project, env={"EDGECI_COMPOSER_KERNEL": str(bogus)})
    assert r.returncode == 2
    line = _one_error_line(r.stderr)
    assert "composer.kernel" in line and "not a Linux kernel image" in line
    assert not _artifacts(project)


def test_parent_missing_at_url(composed_gateway_copy: ComposedProject, tmp_path: Path) -> None:
    project = composed_gateway_copy
    before = _artifacts(project.dir)
    prod = extract_container_repo(project.artifact, tmp_path / "prod")
    missing = "0" * 64
    r = edgeci_cli(["compose", "gateway", "--parent", missing, "--url", f"file://{prod}"], cwd=project.dir)
    assert r.returncode == 2
    line = _one_error_line(r.stderr)
    assert f"parent commit {missing} does not exist at file://{prod}" in line
    assert _artifacts(project.dir) == before
    assert json.loads(project.record.read_text())["sections"]["compose"]["commit"] == project.commit


def test_ref_missing_at_url(tmp_path: Path) -> None:
    project = _new_project(tmp_path)
    empty = tmp_path / "empty-repo"
    ostree.init(empty, mode="archive")
    r = edgeci_cli(["compose", "gateway", "--url", f"file://{empty}"], cwd=project)
    assert r.returncode == 2
    line = _one_error_line(r.stderr)
    assert "does not exist at" in line and "rhel/9/x86_64/edge" in line
    assert not _artifacts(project)


def test_failed_compose_exits_1_with_its_log_in_junit(tmp_path: Path, kernel_cache) -> None:  # type: ignore[no-untyped-def]
    project = _new_project(tmp_path)
    bp = project / "blueprints" / "gateway.toml"
    bp.write_text(bp.read_text().replace('groups = ["wheel"]', 'groups = ["wheel", "nosuchgroup"]'))
    r = edgeci_cli(["compose", "gateway"], cwd=project)
    assert r.returncode == 1, r.stderr
    assert "FAILED" in r.stdout and "nosuchgroup" in _one_error_line(r.stderr)
    report = (project / "reports" / "compose-gateway-x86_64.xml").read_text()
    assert "<failure" in report and "nosuchgroup" in report and "kernel 6." in report  # the log is attached
    rec = json.loads((project / ARCH_DIR / "record.json").read_text())["sections"]["compose"]
    assert rec["status"] == "failed" and rec["commit"] == ""
    assert not list((project / ARCH_DIR).glob("*.tar"))


@pytest.mark.parametrize("args, message", [
    (["--parent", "abc"], "is not a commit checksum"),
    (["--parent", "f" * 64], "is not in the local composer's repo"),
    (["--arch", "aarch64"], "x86_64 only"),
])
def test_bad_request(tmp_path: Path, args: list[str], message: str) -> None:
    project = _new_project(tmp_path)
    r = edgeci_cli(["compose", "gateway", *args], cwd=project)
    assert r.returncode == 2
    assert message in _one_error_line(r.stderr)


# -- the protocol, in process ----------------------------------------------------------------------------

def test_local_composer_implements_the_protocol(tmp_path: Path, kernel_cache) -> None:  # type: ignore[no-untyped-def]
    from edgeci.composer import backend
    from edgeci.composer.base import Composer, ComposeRequest, ComposeState
    from edgeci.composer.local import LocalComposer
    from edgeci.config import Config
    from edgeci.errors import ComposerError

    project = _new_project(tmp_path)
    cfg = Config(root=project)
    cfg.composer.os = "busybox"  # the suite's OS (the dataclass default is the device OS)
    composer = backend(cfg)
    assert isinstance(composer, LocalComposer) and isinstance(composer, Composer)
    text = (project / "blueprints" / "gateway.toml").read_text()
    with pytest.raises(BlueprintError, match="named 'gateway', not 'other'"):
        composer.push_blueprint("other", text)
    composer.push_blueprint("gateway", text)
    assert (project / "build" / "composer" / "blueprints" / "gateway.toml").read_text() == text
    request = ComposeRequest(blueprint_name="gateway", blueprint_toml=text, image_type="edge-commit",
                             ref="test/ref", blueprint_version="1.0.0", git_sha="abc123",
                             checks_yaml="checks:\n  - name: v\n    os_release_version: true\n")
    with pytest.raises(ComposerError, match="not 'edge-installer'"):
        composer.start(ComposeRequest(**{**request.__dict__, "image_type": "edge-installer"}))
    states: list[str] = []
    cid = composer.start(request)
    status = composer.wait(cid, deadline=120, progress=lambda s, t: states.append(s))
    assert status.state is ComposeState.FINISHED and states[-1] == "FINISHED"
    assert any(s.startswith("RUNNING") for s in states)
    info = composer.info(cid)
    assert ostree.is_checksum(info["commit"]) and info["parent"] == "" and info["version"] == "1.0.0"
    assert "commit " + info["commit"] in composer.logs(cid)
    dest = composer.download(cid, tmp_path / "dl")
    assert dest == tmp_path / "dl" / f"{cid}-commit.tar" and not list((tmp_path / "dl").glob(".*"))
    with tarfile.open(dest) as tar:
        tar.extractall(tmp_path / "x", filter="tar")
    assert ostree.metadata(tmp_path / "x" / "repo", info["commit"], "edgeci.git-sha") == "abc123"
    assert ostree.rev_parse(tmp_path / "x" / "repo", "test/ref") == info["commit"]
    with pytest.raises(ComposerError, match="unknown compose"):
        composer.status("nope")


def test_a_compose_whose_process_died_is_failed(tmp_path: Path) -> None:
    from edgeci.composer.base import ComposeState
    from edgeci.composer.local import LocalComposer
    from edgeci.config import Config

    composer = LocalComposer(Config(root=tmp_path))
    d = tmp_path / "build" / "composer" / "composes" / "dead"
    d.mkdir(parents=True)
    dead = run(["sh", "-c", "echo $$"]).stdout.strip()  # a pid that has exited
    (d / "status.json").write_text(json.dumps({"id": "dead", "state": "RUNNING", "pid": int(dead)}))
    status = composer.status("dead")
    assert status.state is ComposeState.FAILED and "exited before the compose finished" in status.detail


def test_disk_full_while_composing(tmp_path: Path, kernel_cache) -> None:  # type: ignore[no-untyped-def]
    """The build directory on a 4 MB tmpfs (a private mount namespace): the compose cannot finish."""
    import subprocess
    import sys

    project = _new_project(tmp_path)
    small = tmp_path / "small"
    small.mkdir()
    script = (f"mount -t tmpfs -o size=4m tmpfs {small} && cd {project} && "
              f"EDGECI_PROJECT_BUILD_DIR={small}/build {sys.executable} -m edgeci compose gateway; "
              f"rc=$?; ls -A {small}/build/gateway/x86_64 {small}/build/composer/composes/*; exit $rc")
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                       capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 2, r.stdout + r.stderr
    line = _one_error_line(r.stderr)
    assert "No space left on device" in line or "could not write" in line, line
    assert ".tar" not in r.stdout and ".part" not in r.stdout  # nothing half-written
