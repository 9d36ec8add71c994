"""Reliability of `edgeci promote`: SIGKILL at every step boundary and at random moments, and two
promotions at once.

Each kill run restores production to the same starting point (1.0.0 released), runs
`python -m edgeci promote` as a child in its own process group and SIGKILLs the whole group (as a CI runner
killing a job would, ostree children included). Afterwards production's ref is the old or the new commit,
never dangling or partial, fsck passes, and running promote again converges to exactly one release.
"""

from __future__ import annotations

import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgeci.promotion import STEPS
from edgeci.tools import ostree
from tests.fixtures.promote import PROMOTE_BP, PromoteLab, kill_group, wait_for

pytestmark = pytest.mark.slow

BOUNDARIES = [*STEPS, "after-prune"]  # "gate" = before step 1 … "after-prune" = all done but not exited
RANDOM_RUNS = 12


@dataclass
class Snapshot:
    prod: Path
    record: Path
    old: str  # production before the promotion
    new: str  # the approved candidate


def prepare(lab: PromoteLab) -> Snapshot:
    old = lab.candidate("1.0.0")
    assert lab.cli("promote", PROMOTE_BP) == 0
    new = lab.candidate("1.1.0")
    snap = Snapshot(lab.root / "snap-prod", lab.root / "snap-record.json", old, new)
    shutil.copytree(lab.prod_repo, snap.prod, symlinks=True)
    shutil.copyfile(lab.record_path, snap.record)
    return snap


def restore(lab: PromoteLab, snap: Snapshot) -> None:
    shutil.rmtree(lab.prod_repo)
    shutil.copytree(snap.prod, lab.prod_repo, symlinks=True)
    shutil.copyfile(snap.record, lab.record_path)


def check_after_kill(lab: PromoteLab, snap: Snapshot, what: str) -> None:
    repo = lab.prod_repo
    ref = lab.prod_commit()
    assert ref in (snap.old, snap.new), f"{what}: production ref is {ref}"
    for name in ostree.refs(repo):
        c = ostree.rev_parse(repo, name)
        assert c and ostree.has_commit(repo, c) and not ostree.is_partial(repo, c), f"{what}: {name} -> {c}"
    r = ostree.fsck(repo)
    assert r.ok and "no errors found" in r.stdout + r.stderr, f"{what}: fsck: {r.stdout}{r.stderr}"


def check_converged(lab: PromoteLab, snap: Snapshot, what: str) -> None:
    assert lab.cli("promote", PROMOTE_BP) == 0, f"{what}: re-running promote failed"
    repo = lab.prod_repo
    assert lab.prod_commit() == snap.new, what
    assert [r["checksum"] for r in lab.releases()] == [snap.old, snap.new], what
    assert ostree.signature_key_ids(repo, snap.new, lab.keys.home) == [lab.keys.key[-16:]], \
        f"{what}: expected exactly one signature"
    assert f"{snap.old}-{snap.new}" in ostree.static_delta_list(repo), what
    keep = repo / "refs" / "remotes" / "edgeci-keep" / "release"
    assert sorted(p.name for p in keep.iterdir()) == sorted([snap.old, snap.new]), f"{what}: prune step undone"
    r = ostree.fsck(repo)
    assert r.ok, f"{what}: fsck after re-run: {r.stderr}"
    client = lab.client(f"client-{abs(hash(what)) % 10**8}")
    pulled = lab.client_pull(client)
    assert pulled.ok, f"{what}: client pull: {pulled.stderr}"


def test_sigkill_at_every_step_boundary_and_at_random_moments(promote_lab: PromoteLab) -> None:
    lab = promote_lab
    snap = prepare(lab)

    # one clean run gives the duration the random kills spread over
    started = time.monotonic()
    p = lab.subprocess("promote", PROMOTE_BP)
    _out, err = p.communicate(timeout=300)
    duration = time.monotonic() - started
    assert p.returncode == 0, err
    restore(lab, snap)

    runs = 0
    for spot in BOUNDARIES:
        p = lab.subprocess("promote", PROMOTE_BP, env={"EDGECI_TEST_PAUSE_AT": spot})
        try:
            wait_for(p, f"edgeci-test: paused at {spot}")
        finally:
            kill_group(p)
        check_after_kill(lab, snap, f"killed at {spot}")
        check_converged(lab, snap, f"killed at {spot}")
        restore(lab, snap)
        runs += 1

    rng = random.Random(6)
    outcomes = {"old": 0, "new": 0}
    for i in range(RANDOM_RUNS):
        delay = rng.uniform(0.05, duration)
        p = lab.subprocess("promote", PROMOTE_BP)
        time.sleep(delay)
        kill_group(p)
        what = f"random kill {i} after {delay:.2f}s"
        check_after_kill(lab, snap, what)
        outcomes["new" if lab.prod_commit() == snap.new else "old"] += 1
        check_converged(lab, snap, what)
        restore(lab, snap)
        runs += 1
    # Uniform delays over one clean run's duration can all land on one side of the ref update when the
    # machine's load changes between runs: top up with kills aimed at the side that was missed, still at
    # random moments (before the ref step is reached / right after it is announced).
    for i in range(10):
        side = "old" if outcomes["old"] == 0 else "new" if outcomes["new"] == 0 else None
        if side is None:
            break
        p = lab.subprocess("promote", PROMOTE_BP)
        if side == "new":
            wait_for(p, "promote ref:")
            time.sleep(rng.uniform(0.0, 0.05))
        else:
            time.sleep(rng.uniform(0.05, 0.3))
        kill_group(p)
        what = f"aimed kill {i} ({side} side)"
        check_after_kill(lab, snap, what)
        outcomes["new" if lab.prod_commit() == snap.new else "old"] += 1
        check_converged(lab, snap, what)
        restore(lab, snap)
        runs += 1
    assert runs >= 20
    # the random kills really landed on both sides of the ref update (else they proved little)
    print(f"random kills: production left at the old commit {outcomes['old']}x, at the new one {outcomes['new']}x")
    assert outcomes["old"] > 0 and outcomes["new"] > 0, outcomes


def test_two_promotions_at_once_are_serialized_by_the_lock(promote_lab: PromoteLab) -> None:
    lab = promote_lab
    snap = prepare(lab)
    resume = lab.root / "resume"
    first = lab.subprocess("promote", PROMOTE_BP, env={"EDGECI_TEST_PAUSE_AT": "pull",
                                                       "EDGECI_TEST_RESUME_FILE": str(resume)})
    second = None
    try:
        wait_for(first, "edgeci-test: paused at pull")  # first holds the lock, mid-promotion
        second = lab.subprocess("promote", PROMOTE_BP)
        time.sleep(2.0)
        assert second.poll() is None, "the second promotion did not wait for the lock"
        resume.touch()
        out1, err1 = first.communicate(timeout=300)
        out2, err2 = second.communicate(timeout=300)
    finally:
        for p in (first, second):
            if p is not None and p.poll() is None:
                kill_group(p)
    assert first.returncode == 0, err1
    assert second.returncode == 0, err2
    assert "promoted:" in out1
    assert "already in production" in out2  # it ran only after the first had finished
    assert lab.prod_commit() == snap.new
    assert [r["checksum"] for r in lab.releases()] == [snap.old, snap.new]


def test_competing_candidates_at_once_promote_exactly_one(promote_lab: PromoteLab) -> None:
    lab = promote_lab
    old = lab.candidate("1.0.0")
    assert lab.cli("promote", PROMOTE_BP) == 0
    b = lab.candidate("1.1.0")
    other = lab.root / "project-b"
    shutil.copytree(lab.project, other, symlinks=True)
    c = lab.candidate("1.2.0", parent=old)  # a sibling of b, built on the same production
    pb = lab.subprocess("promote", PROMOTE_BP, project=other)
    pc = lab.subprocess("promote", PROMOTE_BP)
    _out_b, err_b = pb.communicate(timeout=300)
    _out_c, err_c = pc.communicate(timeout=300)
    codes = sorted([pb.returncode, pc.returncode])
    assert codes == [0, 1], (err_b, err_c)
    winner = b if pb.returncode == 0 else c
    loser_err = err_c if pb.returncode == 0 else err_b
    assert lab.prod_commit() == winner
    assert [r["checksum"] for r in lab.releases()] == [old, winner]
    assert "production" in loser_err and ("version-increases" in loser_err or "parent-is-production" in loser_err)
    assert ostree.fsck(lab.prod_repo).ok


def test_a_promotion_waiting_longer_than_lock_timeout_gives_up(promote_lab: PromoteLab) -> None:
    lab = promote_lab
    snap = prepare(lab)
    first = lab.subprocess("promote", PROMOTE_BP, env={"EDGECI_TEST_PAUSE_AT": "deltas"})
    try:
        wait_for(first, "edgeci-test: paused at deltas")
        second = lab.subprocess("promote", PROMOTE_BP, "--set", "prod.lock_timeout=1")
        _out, err = second.communicate(timeout=120)
        assert second.returncode == 2
        assert "another promotion holds the production lock (pid" in err
        assert "raise prod.lock_timeout" in err
    finally:
        kill_group(first)
    assert lab.prod_commit() == snap.old
