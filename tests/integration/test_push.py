"""`edgeci push` against a real docker-registry with basic auth, and a real skopeo.

Covers: push with tags and digest, pull back by digest with identical layers, the oci: default,
wrong credentials (401), no credentials, registry down, 500-then-OK retried, 500 for good, an
edge-commit refused, a changed archive refused — and no secret in any output, record or report.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

from edgeci.tools import skopeo
from edgeci.tools.skopeo import Creds
from tests.fixtures.registry import EdgeProject, FaultProxy, Registry, free_port


def use_registry(project: EdgeProject, host: str, **registry: object) -> None:
    project.write_config(registry={"image": f"docker://{host}/edge/{{blueprint}}", "tls_verify": False,
                                   "tags": ["{version}-{arch}", "candidate"], "retry_times": 2, **registry})


def assert_no_secret(project: EdgeProject, secret: str, *outputs: str) -> None:
    for text in outputs:
        assert secret not in text
    for path in [project.record, *(project.root / "reports").glob("*.xml")]:
        if path.exists():
            assert secret not in path.read_text(), path


def test_push_to_the_registry_with_auth_records_digest_and_tags(edge_project: EdgeProject,
                                                                 registry: Registry) -> None:
    use_registry(edge_project, registry.host)
    r = edge_project.cli("push", "edge", env=registry.env)
    assert r.returncode == 0, r.stderr
    push = edge_project.load_record()["sections"]["push"]
    assert push["status"] == "passed"
    assert push["destination"] == f"docker://{registry.host}/edge/edge"
    assert push["tags"] == ["1.0.0", "latest", "1.0.0-x86_64", "candidate"]
    assert push["digest"].startswith("sha256:") and len(push["digest"]) == 71
    assert push["image_ref"] == f"{push['destination']}@{push['digest']}"
    creds = Creds(registry.user, registry.password)
    tags = skopeo.list_tags(push["destination"], tls_verify=False, creds=creds)
    assert sorted(tags) == sorted(push["tags"])
    for tag in tags:  # every tag names the recorded digest
        assert skopeo.inspect(f"{push['destination']}:{tag}", tls_verify=False, creds=creds)["Digest"] == push["digest"]
    report = (edge_project.root / "reports" / "push-edge-x86_64.xml").read_text()
    for case in ('name="copy"', 'name="tag 1.0.0"', 'name="tag latest"', 'name="tag candidate"', 'name="verify"'):
        assert case in report
    assert "<failure" not in report and "<error" not in report
    assert_no_secret(edge_project, registry.password, r.stdout, r.stderr)


def test_pulled_back_by_digest_the_layers_are_the_archive_layers(edge_project: EdgeProject, registry: Registry,
                                                                  tmp_path: Path) -> None:
    from edgeci.oci import ArchiveReader

    use_registry(edge_project, registry.host)
    assert edge_project.cli("push", "edge", env=registry.env).returncode == 0
    push = edge_project.load_record()["sections"]["push"]
    pulled = tmp_path / "pulled"
    digest = skopeo.copy(push["image_ref"], f"oci:{pulled}:back", src_tls_verify=False,
                         src_creds=Creds(registry.user, registry.password), digestfile=tmp_path / "d")
    assert digest == push["digest"]
    with ArchiveReader(edge_project.archive) as archive, ArchiveReader(pulled) as back:
        original, copy = archive.image(), back.image("back")
        assert copy.digest == push["digest"]
        assert copy.config["rootfs"]["diff_ids"] == original.config["rootfs"]["diff_ids"]
        assert len(copy.layers) == len(original.layers) == 2
        for mine, theirs in zip(original.layers, copy.layers, strict=True):
            back.verify_blob(theirs["digest"])
            data = back.read(back.blob_name(theirs["digest"]))
            if theirs["mediaType"].endswith("+gzip"):  # skopeo compresses uncompressed layers on push
                data = gzip.decompress(data)
            assert "sha256:" + hashlib.sha256(data).hexdigest() == mine["digest"]
            assert data == archive.read(archive.blob_name(mine["digest"]))


def test_the_default_oci_directory_needs_no_registry(edge_project: EdgeProject) -> None:
    r = edge_project.cli("push", "edge")
    assert r.returncode == 0, r.stderr
    push = edge_project.load_record()["sections"]["push"]
    assert push["destination"] == "oci:build/oci/edge"
    index = json.loads((edge_project.root / "build" / "oci" / "edge" / "index.json").read_text())
    names = {m["annotations"]["org.opencontainers.image.ref.name"]: m["digest"] for m in index["manifests"]}
    assert names == {"1.0.0": push["digest"], "latest": push["digest"]}


def test_wrong_credentials_are_one_clear_line(edge_project: EdgeProject, registry: Registry) -> None:
    use_registry(edge_project, registry.host)
    wrong = "wrong-" + registry.password
    r = edge_project.cli("push", "edge", env={**registry.env, "EDGECI_REGISTRY_PASSWORD": wrong})
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert f"wrong credentials for {registry.host}" in lines[0]
    assert "EDGECI_REGISTRY_PASSWORD" in lines[0]
    assert "push" not in edge_project.load_record()["sections"]
    assert_no_secret(edge_project, wrong, r.stdout, r.stderr)
    assert_no_secret(edge_project, registry.password, r.stdout, r.stderr)
    report = (edge_project.root / "reports" / "push-edge-x86_64.xml").read_text()
    assert "<error" in report and "wrong credentials" in report


def test_no_credentials_says_the_registry_needs_them(edge_project: EdgeProject, registry: Registry) -> None:
    use_registry(edge_project, registry.host)
    r = edge_project.cli("push", "edge")
    assert r.returncode == 2
    assert f"registry {registry.host} requires credentials" in r.stderr


def test_half_the_credentials_is_a_config_error(edge_project: EdgeProject, registry: Registry) -> None:
    use_registry(edge_project, registry.host)
    r = edge_project.cli("push", "edge", env={"EDGECI_REGISTRY_PASSWORD": registry.password})
    assert r.returncode == 2
    assert "EDGECI_REGISTRY_USER is not set" in r.stderr
    assert registry.password not in r.stderr


def test_registry_down(edge_project: EdgeProject) -> None:
    host = f"127.0.0.1:{free_port()}"  # nothing listens there
    use_registry(edge_project, host)
    r = edge_project.cli("push", "edge", env={"EDGECI_REGISTRY_USER": "u", "EDGECI_REGISTRY_PASSWORD": "secret-pw"})
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [r.stderr.strip()]
    assert f"registry {host} unreachable" in r.stderr
    assert "secret-pw" not in r.stderr + r.stdout


def test_a_500_then_success_is_retried(edge_project: EdgeProject, registry: Registry,
                                       registry_proxy: FaultProxy) -> None:
    registry_proxy.failures, registry_proxy.after = 2, 3  # the first blob upload fails twice
    use_registry(edge_project, registry_proxy.host)
    r = edge_project.cli("push", "edge", env=registry.env)
    assert r.returncode == 0, r.stderr
    assert registry_proxy.injected() == 2
    push = edge_project.load_record()["sections"]["push"]
    # the image really arrived: the registry itself (not the proxy) answers for the digest
    info = skopeo.inspect(f"docker://{registry.host}/edge/edge@{push['digest']}", tls_verify=False,
                          creds=Creds(registry.user, registry.password))
    assert info["Digest"] == push["digest"]


def test_a_registry_that_keeps_answering_500_fails_after_bounded_retries(
        edge_project: EdgeProject, registry: Registry, registry_proxy: FaultProxy) -> None:
    registry_proxy.failures = 1000
    use_registry(edge_project, registry_proxy.host, retry_times=2)
    r = edge_project.cli("push", "edge", env=registry.env)
    assert r.returncode == 2
    assert f"registry {registry_proxy.host} answered HTTP 500 Internal Server Error (3 attempts)" in r.stderr
    assert registry_proxy.injected() >= 3  # at least one refused request per attempt
    assert_no_secret(edge_project, registry.password, r.stdout, r.stderr)


def test_an_edge_commit_is_refused(edge_project: EdgeProject) -> None:
    from edgeci.record import BuildRecord

    rec = BuildRecord.load(edge_project.record)
    rec.sections["compose"]["type"] = "edge-commit"
    rec.save()
    r = edge_project.cli("push", "edge")
    assert r.returncode == 2
    assert "composed as edge-commit, not edge-container" in r.stderr


def test_without_a_compose_push_says_what_to_run(edge_project: EdgeProject) -> None:
    from edgeci.record import BuildRecord

    rec = BuildRecord.load(edge_project.record)
    del rec.sections["compose"]
    rec.save()
    r = edge_project.cli("push", "edge")
    assert r.returncode == 2
    assert "no 'compose' section" in r.stderr and "edgeci compose" in r.stderr


def test_an_archive_changed_since_compose_is_refused(edge_project: EdgeProject) -> None:
    with open(edge_project.archive, "ab") as f:
        f.write(b"\0" * 512)
    r = edge_project.cli("push", "edge")
    assert r.returncode == 2
    assert "does not match the sha256 in the build record" in r.stderr


def test_debug_log_shows_an_authfile_never_the_credentials(edge_project: EdgeProject, registry: Registry) -> None:
    use_registry(edge_project, registry.host)
    r = edge_project.cli("push", "edge", "--debug", env=registry.env)
    assert r.returncode == 0, r.stderr
    assert "skopeo copy" in r.stderr and "--dest-authfile=" in r.stderr
    assert "--dest-creds" not in r.stderr and "--creds" not in r.stderr
    assert_no_secret(edge_project, registry.password, r.stdout, r.stderr)
    assert_no_secret(edge_project, Creds(registry.user, registry.password).basic, r.stdout, r.stderr)


def test_the_temporary_authfile_is_private_and_removed() -> None:
    import os
    import stat

    creds = Creds("ci-user", "tmp-secret-value")
    assert "tmp-secret-value" not in repr(creds)
    with skopeo.temp_authfile("docker://reg.example:5000/edge/x", creds) as path:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
        auths = json.loads(Path(path).read_text())["auths"]
        assert list(auths) == ["reg.example:5000"] and auths["reg.example:5000"]["auth"] == creds.basic
    assert not os.path.exists(path) and not os.path.exists(os.path.dirname(path))


# stderr lines real skopeo 1.9 printed against docker-registry 2.8
SKOPEO_ERRORS = {
    'level=fatal msg="trying to reuse blob sha256:27 at destination: checking whether a blob sha256:27 exists in '
    '127.0.0.1:5055/edge: unauthorized: authentication required"': "wrong credentials for 127.0.0.1:5055",
    'level=fatal msg="trying to reuse blob sha256:27 at destination: pinging container registry 127.0.0.1:5056: '
    'Get \\"http://127.0.0.1:5056/v2/\\": dial tcp 127.0.0.1:5056: connect: connection refused"':
        "registry 127.0.0.1:5055 unreachable",
    'level=fatal msg="Error parsing image name \\"docker://127.0.0.1:5055/edge:nope\\": reading manifest nope in '
    '127.0.0.1:5055/edge: manifest unknown: manifest unknown"': "no such image (manifest unknown)",
    'level=fatal msg="writing blob: initiating layer upload to /v2/edge/blobs/uploads/ in 127.0.0.1:5055: '
    'received unexpected HTTP status: 500 Internal Server Error"':
        "registry 127.0.0.1:5055 answered HTTP 500 Internal Server Error",
    'level=fatal msg="trying to reuse blob sha256:27 at destination: pinging container registry 127.0.0.1:5055: '
    'invalid status code from registry 503 (Service Unavailable)"':
        "registry 127.0.0.1:5055 answered HTTP 503 Service Unavailable",
    'level=fatal msg="writing blob: open /srv/oci/blobs/x: permission denied"': "skopeo failed: writing blob",
}


def test_skopeo_errors_become_one_clear_line() -> None:
    for stderr, expected in SKOPEO_ERRORS.items():
        err = skopeo.classify(stderr, "docker://127.0.0.1:5055/edge:1", had_creds=True)
        assert expected in str(err), (stderr, str(err))
        assert "\n" not in str(err)
