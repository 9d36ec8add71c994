"""Promotion against what real servers and real disks do: Image Builder's OS-release version stamp, a signed
production without a key, a machine without ostree or gpg, and a production filesystem that fills up during the
pull, the static deltas and the summary (a private tmpfs in a user and mount namespace, removed with it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgeci.tools import ostree
from edgeci.tools.run import have
from tests.fixtures.promote import PROMOTE_BP, PROMOTE_REF, PromoteLab, promote_write_tree


def promote_direct(config: str | Path, *, rollback: bool = False) -> int:
    """`edgeci promote` (or rollback) as its domain call: the pinned promotion of the record's candidate, with
    the step printer (and its test pause hook); the error as the command line prints it. The evidence checks
    of the stage glue are not what these tests are about."""
    from edgeci.config import load_config
    from edgeci.errors import EdgeCIError
    from edgeci.production import ProdSettings
    from edgeci.promotion import PromoteRequest, promote
    from edgeci.promotion import rollback as roll_back
    from edgeci.target import load_record
    from edgeci.ui import error, step_printer

    try:
        cfg = load_config(config)
        settings = ProdSettings.from_config(cfg)
        if rollback:
            roll_back(settings, cfg.ref(PROMOTE_BP), by="alice", blueprint=PROMOTE_BP, arch="x86_64")
            return 0
        rec = load_record(cfg, PROMOTE_BP, "x86_64")
        cand = rec.candidate(cfg.ref(PROMOTE_BP, "x86_64"))
        req = PromoteRequest(ref=cand.ref, checksum=cand.checksum, version=cand.version, parent=cand.parent,
                             stage_url=cand.stage_url, gate=cand.gate.as_dict() if cand.gate else {},
                             blueprint=PROMOTE_BP, arch="x86_64", blueprint_info=rec.get("blueprint") or {},
                             approvals_required=cfg.gate.approvals_required)
        promote(settings, req, on_step=step_printer("promote"))
        return 0
    except EdgeCIError as e:
        error(str(e))
        return e.exit_code


def record_booted(lab: PromoteLab, checksum: str, version: str) -> None:
    """The record of a candidate whose boot test passed on a booting backend (the lab's records say sysroot,
    which a production gate does not accept); then approved and gated."""
    from edgeci.record import BuildRecord

    lab.write_record(checksum, version)
    rec = BuildRecord.load(lab.record_path)
    rec.set("boot_test", {**rec.section("boot_test"), "backend": "qemu"})
    rec.save()
    assert lab.approve("alice") == 0
    assert lab.cli("gate", PROMOTE_BP) == 0


def candidate(lab: PromoteLab, version: str, **tree: int) -> str:
    c = lab.stage_commit(version, **tree)  # type: ignore[arg-type]
    record_booted(lab, c, version)
    return c


def osbuild_candidate(lab: PromoteLab, version: str, *, os_release: str = "9.4") -> str:
    """A candidate committed the way osbuild commits: the commit's `version` metadata is the OS release, the
    release version (the blueprint's) is only in the build record."""
    parent = lab.prod_commit()
    if parent and not ostree.has_commit(lab.stage_repo, parent):
        ostree.pull_local(lab.stage_repo, lab.prod_repo, [parent])
    tree = lab.root / "trees" / version
    promote_write_tree(tree, version)
    c = ostree.commit(lab.stage_repo, PROMOTE_REF, tree_dir=tree, subject="", metadata={"version": os_release},
                      parent=parent or "none", extra=["--bootable"])
    ostree.summary_update(lab.stage_repo)
    record_booted(lab, c, version)
    return c


def test_os_release_version_stamp_never_orders_releases(promote_lab: PromoteLab,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    lab = promote_lab
    a = osbuild_candidate(lab, "1.0.0")
    assert ostree.metadata(lab.stage_repo, a, "version") == "9.4"
    assert promote_direct(lab.config) == 0
    b = osbuild_candidate(lab, "1.0.1")
    assert promote_direct(lab.config) == 0, capsys.readouterr().err
    assert lab.prod_commit() == b
    assert [(r["version"], r["checksum"]) for r in lab.releases()] == [("1.0.0", a), ("1.0.1", b)]
    capsys.readouterr()
    assert lab.cli("history", PROMOTE_BP) == 0
    out = capsys.readouterr().out
    assert "1.0.1" in out and "9.4" not in out
    # a rollback publishes production's version + 1 from the log (1.0.2), not the stamp's (9.5)
    assert promote_direct(lab.config, rollback=True) == 0
    assert [r["version"] for r in lab.releases()] == ["1.0.0", "1.0.1", "1.0.2"]
    assert lab.releases()[-1]["rollback_of"] == "1.0.0"
    # and the next candidate is ordered after the rollback by the log: 1.0.3 passes, 1.0.2 would not
    osbuild_candidate(lab, "1.0.3")
    assert promote_direct(lab.config) == 0
    assert lab.releases()[-1]["version"] == "1.0.3"


def test_a_signed_production_refuses_an_unsigned_promotion(promote_lab: PromoteLab,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    lab = promote_lab
    a = candidate(lab, "1.0.0")
    assert promote_direct(lab.config) == 0
    sig = (lab.prod_repo / "summary.sig").read_bytes()
    summary = (lab.prod_repo / "summary").read_bytes()
    lab.write_config(gpg_key="", gpg_homedir="")  # the key taken out of edgeci.yaml itself
    candidate(lab, "1.1.0")
    objects = sorted(p.name for p in (lab.prod_repo / "objects").rglob("*"))
    capsys.readouterr()
    assert promote_direct(lab.config) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "production is signed" in err[0] and "prod.gpg_key" in err[0]
    assert lab.prod_commit() == a
    assert (lab.prod_repo / "summary.sig").read_bytes() == sig
    assert (lab.prod_repo / "summary").read_bytes() == summary
    assert sorted(p.name for p in (lab.prod_repo / "objects").rglob("*")) == objects  # nothing pulled
    assert promote_direct(lab.config, rollback=True) == 2
    assert (lab.prod_repo / "summary.sig").read_bytes() == sig and lab.prod_commit() == a


def test_a_production_whose_log_says_signed_stays_signed(promote_lab: PromoteLab,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """summary.sig lost (say, restored from a backup without it): the signed commit and the log still tell."""
    lab = promote_lab
    candidate(lab, "1.0.0")
    assert promote_direct(lab.config) == 0
    (lab.prod_repo / "summary.sig").unlink()
    lab.write_config(gpg_key="", gpg_homedir="")
    candidate(lab, "1.1.0")
    capsys.readouterr()
    assert promote_direct(lab.config) == 2
    assert "is signed" in capsys.readouterr().err


def _path_with(tmp: Path, *programs: str) -> str:
    """A PATH directory holding only `programs` (links to the real ones)."""
    d = tmp / ("bin-" + "-".join(programs or ("none",)))
    d.mkdir()
    for p in programs:
        real = subprocess.run(["sh", "-c", f"command -v {p}"], capture_output=True, text=True).stdout.strip()
        (d / p).symlink_to(real)
    return str(d)


@pytest.mark.parametrize(("programs", "missing"), [((), "ostree"), (("ostree",), "gpg")])
def test_missing_tools_are_found_before_production_is_touched(promote_lab: PromoteLab, tmp_path: Path,
                                                               programs: tuple[str, ...], missing: str) -> None:
    lab = promote_lab
    candidate(lab, "1.0.0")
    assert not lab.prod_repo.exists()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGECI_") or k == "EDGECI_COMPOSER_OS"}
    env.update(lab.env, PATH=_path_with(tmp_path, *programs), PYTHONPATH=str(ROOT))
    p = subprocess.run([sys.executable, "-c", RUNNER, str(lab.config)], cwd=lab.project, env=env, text=True,
                       capture_output=True, timeout=120, check=False)
    out, err = p.stdout, p.stderr
    assert p.returncode == 2, out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"'{missing}' is not installed" in lines[0], err
    assert not lab.prod_repo.exists()  # no empty repo, no lock file


ROOT = Path(__file__).resolve().parents[2]
RUNNER = ("import sys\nfrom tests.integration.test_promote_robustness import promote_direct\n"
          "sys.exit(promote_direct(sys.argv[1]))\n")

DRIVER = r'''
import json, os, select, subprocess, sys, time
args = json.loads(sys.argv[1])
prod_root, backup, config, project = args["prod_root"], args["backup"], args["config"], args["project"]
subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={args['size']}", "tmpfs", prod_root], check=True)
subprocess.run(["cp", "-a", backup + "/repo", prod_root + "/repo"], check=True)
env = {k: v for k, v in os.environ.items() if not k.startswith("EDGECI_") or k == "EDGECI_COMPOSER_OS"}
env.update(args["env"])

def fill(path):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    for size in (1 << 20, 1 << 16, 1 << 12, 1):
        try:
            while True:
                os.write(fd, b"\0" * size)
        except OSError:
            pass
    os.close(fd)

def promote(pause):
    e = dict(env)
    resume = os.path.join(args["tmp"], "resume-" + (pause or "none"))
    if pause:
        e.update(EDGECI_TEST_PAUSE_AT=pause, EDGECI_TEST_RESUME_FILE=resume)
    p = subprocess.Popen([sys.executable, "-c", args["runner"], config], cwd=project,
                         env=e, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    filler = os.path.join(prod_root, "filler")
    out = ""
    if pause:
        fd, end = p.stdout.fileno(), time.monotonic() + 240
        while "paused at " + pause not in out and time.monotonic() < end and p.poll() is None:
            if select.select([fd], [], [], 0.1)[0]:
                out += os.read(fd, 65536).decode()
        fill(filler)
        open(resume, "w").close()
    rest, err = p.communicate(timeout=300)
    if os.path.exists(filler):
        os.unlink(filler)
    ref = subprocess.run(["ostree", "--repo=" + prod_root + "/repo", "rev-parse", args["ref"]], capture_output=True,
                         text=True).stdout.strip()
    summary = subprocess.run(["ostree", "--repo=" + prod_root + "/repo", "summary", "--view"],
                             capture_output=True, text=True).stdout
    return {"pause": pause, "rc": p.returncode, "stdout": out + rest, "stderr": err, "ref": ref,
            "summary_has_candidate": args["candidate"] in summary}

results = [promote(s) for s in ("pull", "deltas", "summary")] + [promote(None)]
releases = json.load(open(prod_root + "/repo/releases.json"))["releases"]
fsck = subprocess.run(["ostree", "--repo=" + prod_root + "/repo", "fsck"], capture_output=True, text=True)
print("RESULT " + json.dumps({"results": results, "releases": releases, "fsck": fsck.returncode}))
'''


@pytest.mark.skipif(not have("unshare"), reason="util-linux unshare is required")
def test_disk_full_during_pull_deltas_and_summary_is_one_line_each_and_converges(promote_lab: PromoteLab,
                                                                                 tmp_path: Path) -> None:
    lab = promote_lab
    a = candidate(lab, "1.0.0")
    assert promote_direct(lab.config) == 0
    b = candidate(lab, "1.1.0", files=60, changed=30)
    prod_root = lab.prod_repo.parent
    backup = tmp_path / "backup"
    backup.mkdir()
    subprocess.run(["cp", "-a", str(lab.prod_repo), str(backup / "repo")], check=True)
    used = sum(p.stat().st_size for p in lab.prod_repo.rglob("*") if p.is_file())
    args = {"prod_root": str(prod_root), "backup": str(backup), "config": str(lab.config), "project": str(lab.project),
            "size": f"{(used >> 10) + 16384}k", "env": lab.env, "tmp": str(tmp_path), "bp": PROMOTE_BP,
            "ref": PROMOTE_REF, "candidate": b, "runner": RUNNER}
    proc = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", sys.executable, "-c", DRIVER,
                           json.dumps(args)], capture_output=True, text=True, timeout=900, check=False,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    if "RESULT " not in proc.stdout:
        if "mount" in proc.stderr and ("denied" in proc.stderr or "not permitted" in proc.stderr):
            pytest.skip(f"cannot mount a tmpfs in a user namespace here: {proc.stderr.strip()[-300:]}")
        raise AssertionError(proc.stdout[-3000:] + proc.stderr[-3000:])
    data = json.loads(proc.stdout.split("RESULT ", 1)[1])
    pull, deltas, summary, final = data["results"]
    for r in (pull, deltas, summary):
        assert r["rc"] == 2, r
        lines = r["stderr"].strip().splitlines()
        assert len(lines) == 1, r["stderr"]
        assert "disk full during" in lines[0] and "the filesystem of" in lines[0] and str(prod_root) in lines[0]
        assert "free space there" in lines[0].lower() and "check that the stage is up" not in lines[0]
    assert "during 'pull'" in pull["stderr"] and pull["ref"] == a and "production is unchanged" in pull["stderr"]
    assert "during 'deltas'" in deltas["stderr"] and deltas["ref"] == a and "unchanged" in deltas["stderr"]
    assert "during 'summary'" in summary["stderr"] and summary["ref"] == b
    assert "already points at" in summary["stderr"] and "summary and releases log are stale" in summary["stderr"]
    assert "run 'edgeci promote' again" in summary["stderr"] and not summary["summary_has_candidate"]
    assert final["rc"] == 0, final["stderr"]
    assert final["ref"] == b and final["summary_has_candidate"]
    assert [r["checksum"] for r in data["releases"]] == [a, b]
    assert data["fsck"] == 0
    # the namespace's tmpfs is gone with it: the real production directory never saw any of this
    assert lab.prod_commit() == a
