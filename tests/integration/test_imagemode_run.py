"""`edgeci run gateway-bootc` end to end on this machine: real buildah, skopeo, gnupg, ostree and Debian's
docker-registry on 127.0.0.1. Two releases (1.0.0, then 1.0.1 with a changed config file), each stopping at the
gate, approved, resumed and promoted; then the bad inputs: a production tag moved since the gate, a
Containerfile that does not build, a disallowed base, and a signature store that refuses the push.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeci.imagemode import release
from edgeci.imagemode.sign import Endpoint
from edgeci.tools.run import have
from edgeci.tools.skopeo import Creds
from tests.fixtures.composed import edgeci_cli
from tests.fixtures.promote import GpgKeys
from tests.fixtures.registry import Registry, start_registry

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not all(have(t) for t in ("buildah", "skopeo", "gpg", "ostree", "unshare", "docker-registry")),
    reason="buildah, skopeo, gpg, ostree, unshare and docker-registry are required")]

REPO_ROOT = Path(__file__).resolve().parents[2]
AUTHOR = {"GIT_AUTHOR_NAME": "Dana Developer", "GIT_AUTHOR_EMAIL": "dana@example.com",
          "GIT_COMMITTER_NAME": "Dana Developer", "GIT_COMMITTER_EMAIL": "dana@example.com"}
NAME = "gateway-bootc"


def _git(project: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(project), *args], check=True, capture_output=True,
                   env={**os.environ, **AUTHOR})


def _record(project: Path) -> dict:
    return json.loads((project / f"build/{NAME}/x86_64/record.json").read_text())["sections"]


def _release(project: Path, env: dict[str, str]) -> dict:
    out: dict = {"stop": edgeci_cli(["run", NAME], cwd=project, env=env)}
    out["at_gate"] = _record(project)
    out["approve"] = edgeci_cli(["approve", NAME, "--as", "alex"], cwd=project, env=env)
    out["resume"] = edgeci_cli(["run", NAME, "--resume"], cwd=project, env=env)
    out["record"] = _record(project)
    return out


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, promote_gpg: GpgKeys) -> Iterator[dict]:
    base = tmp_path_factory.mktemp("imgrun")
    reg = start_registry(base / "registry")
    try:
        project = base / "project"
        shutil.copytree(REPO_ROOT / "blueprints" / NAME, project / "blueprints" / NAME)
        (project / "edgeci.yaml").write_text(
            f"registry:\n  image: docker://{reg.host}/edge/{{blueprint}}\n  tls_verify: false\n"
            f"image_mode:\n  gpg_key: {promote_gpg.key}\n  gpg_homedir: {promote_gpg.home}\n"
            "boot_test:\n  backend: sysroot\n")
        _git(project, "init", "-q", "-b", "main")
        _git(project, "add", "-A")
        _git(project, "commit", "-qm", "gateway-bootc 1.0.0")
        out: dict = {"project": project, "registry": reg, "env": reg.env}
        out["first"] = _release(project, reg.env)
        cf = project / "blueprints" / NAME / "Containerfile"
        cf.write_text(cf.read_text().replace("version=1.0.0", "version=1.0.1"))
        conf = project / "blueprints" / NAME / "gateway.conf"
        conf.write_text(conf.read_text() + "log = info\n")
        _git(project, "commit", "-qam", "gateway-bootc 1.0.1")
        out["second"] = _release(project, reg.env)
        out["report"] = edgeci_cli(["report", NAME], cwd=project, env=reg.env)
        yield out
    finally:
        if reg.process is not None:
            reg.process.stop()


def _ep(reg: Registry) -> Endpoint:
    return Endpoint(tls_verify=False, creds=Creds(reg.user, reg.password))


def test_first_release_goes_through_every_stage(lab: dict) -> None:
    first = lab["first"]
    stop = first["stop"]
    assert stop.returncode == 1, stop.stdout + stop.stderr
    for stage in ("lint", "compose", "push", "stage", "boot-test"):
        assert f"<== {stage} {NAME}/x86_64: passed" in stop.stdout
    assert f"approve {NAME} --arch x86_64 --as NAME" in stop.stdout
    gate = first["at_gate"]
    digest = gate["compose"]["digest"]
    assert gate["compose"]["kind"] == "image" and gate["compose"]["commit"] == digest[7:]
    assert gate["compose"]["base"]["digest"].startswith("sha256:") and gate["compose"]["packages"]
    assert gate["push"]["digest"] == digest and gate["push"]["tags"] == ["1.0.0", "latest"]
    assert gate["stage"]["commit"] == digest[7:] and gate["stage"]["tag"] == "stage"
    boot = gate["boot_test"]
    assert boot["device"].startswith("edgeci's stand-in for bootc")
    assert boot["scenarios"]["install"]["outcome"] == "passed"
    assert boot["scenarios"]["upgrade"]["outcome"] == "skipped"  # first release
    assert first["resume"].returncode == 0, first["resume"].stdout + first["resume"].stderr
    promote = first["record"]["promote"]
    assert promote["digest"] == digest and promote["previous"] is None and promote["version"] == "1.0.0"
    # The evidence names the image as its subject and was published beside the releases log.
    assert Path(promote["evidence"]["published"]).is_file()
    bundle = json.loads(Path(promote["evidence"]["published"]).read_text())
    assert bundle["checksum"] == digest[7:] and len(bundle["envelopes"]) == 3
    r = edgeci_cli(["verify", digest[7:], "--repo", str(lab["project"] / f"build/prod/images/{NAME}")],
                   cwd=lab["project"], env=lab["env"])
    assert r.returncode == 0, r.stdout + r.stderr


def test_second_release_upgrades_from_production_and_rolls_back(lab: dict) -> None:
    second, reg = lab["second"], lab["registry"]
    assert second["resume"].returncode == 0, second["resume"].stdout + second["resume"].stderr
    gate = second["at_gate"]
    first_digest = lab["first"]["record"]["promote"]["digest"]
    assert gate["compose"]["parent"] == first_digest[7:]
    boot = gate["boot_test"]
    for scenario in ("install", "upgrade", "rollback"):
        assert boot["scenarios"][scenario]["outcome"] == "passed", boot["scenarios"][scenario]
    # The upgrade downloaded the changed layer (plus config and manifest), not the whole image again.
    layers = gate["compose"]["layers"]
    assert boot["delta_bytes"] < boot["full_bytes"] // 10
    assert boot["delta_bytes"] >= layers[-1]["size"] and gate["push"]["update_bytes"] == layers[-1]["size"]
    assert boot["scenarios"]["rollback"]["booted"] == first_digest[7:]
    digest = gate["compose"]["digest"]
    prod = f"docker://{reg.host}/prod/{NAME}"
    assert release.current_digest(f"{prod}:stable", _ep(reg)) == digest
    assert release.current_digest(f"{prod}:1.0.0", _ep(reg)) == first_digest
    log = json.loads((lab["project"] / f"build/prod/images/{NAME}/releases.json").read_text())
    assert [(r["version"], r["digest"], r["previous"]) for r in log] == [
        ("1.0.0", first_digest, None), ("1.0.1", digest, first_digest)]
    assert log[-1]["approvers"] == ["alex"]


def test_report_shows_image_digests_layers_and_update_bytes(lab: dict) -> None:
    r = lab["report"]
    assert r.returncode == 0, r.stdout + r.stderr
    data = json.loads((lab["project"] / f"reports/report-{NAME}-x86_64.json").read_text())
    image = data["image_mode"]
    gate = lab["second"]["record"]
    assert image["digest"] == gate["compose"]["digest"]
    assert image["base_digest"] == gate["compose"]["base"]["digest"]
    assert [x["size"] for x in image["layers"]] == [x["size"] for x in gate["compose"]["layers"]]
    assert image["update_bytes"] == gate["compose"]["layers"][-1]["size"]
    assert image["full_bytes"] == sum(x["size"] for x in gate["compose"]["layers"])
    html = (lab["project"] / f"reports/report-{NAME}-x86_64.html").read_text()
    assert gate["compose"]["digest"] in html and "update download" in html


def test_bad_inputs(lab: dict) -> None:
    project, reg, env = lab["project"], lab["registry"], lab["env"]
    cf = project / "blueprints" / NAME / "Containerfile"
    good = cf.read_text()

    # 1.0.2 to an approved gate, then someone moves production's tag back to 1.0.0: promote refuses.
    cf.write_text(good.replace("version=1.0.1", "version=1.0.2"))
    _git(project, "commit", "-qam", "gateway-bootc 1.0.2")
    assert edgeci_cli(["run", NAME], cwd=project, env=env).returncode == 1
    assert edgeci_cli(["approve", NAME, "--as", "alex"], cwd=project, env=env).returncode == 0
    assert edgeci_cli(["gate", NAME], cwd=project, env=env).returncode == 0
    prod = f"docker://{reg.host}/prod/{NAME}"
    old, now = lab["first"]["record"]["promote"]["digest"], lab["second"]["record"]["promote"]["digest"]
    subprocess.run(["skopeo", "copy", "--src-tls-verify=false", "--dest-tls-verify=false",
                    f"--src-creds={reg.user}:{reg.password}", f"--dest-creds={reg.user}:{reg.password}",
                    f"{prod}@{old}", f"{prod}:stable"], check=True, capture_output=True)
    r = edgeci_cli(["promote", NAME], cwd=project, env=env)
    assert r.returncode == 1, r.stdout + r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert old in line and now in line and "someone moved it since the gate" in line
    assert release.current_digest(f"{prod}:stable", _ep(reg)) == old  # untouched

    # A Containerfile that does not build: exit 1, the failing step and its line, the log named.
    cf.write_text(good.replace("version=1.0.1", "version=1.0.3").replace(
        "echo gateway > /usr/share/gateway/role", "echo gateway > /usr/share/gateway/role && ls /no/such/dir"))
    _git(project, "commit", "-qam", "broken")
    r = edgeci_cli(["compose", NAME], cwd=project, env=env)
    assert r.returncode == 1, r.stdout + r.stderr
    err = r.stderr.strip().splitlines()[-1]
    assert f"{cf}:8" in err and "ls /no/such/dir" in err and "build.log" in err
    assert _record(project)["compose"]["status"] == "failed"

    # An unpinned, disallowed base: a lint error at its line.
    cf.write_text(good.replace("ARG BASE=registry.redhat.io/rhel10/rhel-bootc:10.0", "ARG BASE=quay.io/x/y:latest"))
    _git(project, "commit", "-qam", "unpinned")
    r = edgeci_cli(["lint", str(cf.relative_to(project))], cwd=project, env=env)
    assert r.returncode == 1
    assert f"blueprints/{NAME}/Containerfile:5: error: [base-unpinned]" in r.stdout

    # The signature store refuses the push: exit 2, one line naming the signature and the fix.
    cf.write_text(good.replace("version=1.0.1", "version=1.0.4"))
    _git(project, "commit", "-qam", "1.0.4")
    assert edgeci_cli(["compose", NAME], cwd=project, env=env).returncode == 0
    (project / "not-a-dir").write_text("x")
    r = edgeci_cli(["--set", "image_mode.lookaside=not-a-dir/sigs", "push", NAME], cwd=project, env=env)
    assert r.returncode == 2, r.stdout + r.stderr
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and "signing or storing the signature failed" in err and reg.password not in err
