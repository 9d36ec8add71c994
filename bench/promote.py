"""`edgeci promote` against the runbook's script, and promotion time as the release history grows.

1. Identical repositories: two production repos start as byte-for-byte copies holding release 1; then each
   next release goes into one repo with the runbook (`ostree pull --mirror --depth=1 edge-stage
   REF@CHECKSUM`, `ostree static-delta generate REF`, `ostree summary -u`) and into the other with
   `python -m edgeci promote` (the signed evidence verified against a trust policy — compose provenance,
   boot test, approval, Ed25519 signatures — then lock, pinned pull, verify, deltas, ref, summary, releases
   log, evidence published, prune). No GPG signing on either side (the runbook has none); edgeci makes the same
   single delta (prod.delta_from_releases=1). Target: edgeci ≤ 1.2× the runbook's wall time. Then `edgeci
   verify` of the last release (target < 1 s).
2. History: 50 promotions into one repo (retention above 50, so history really grows); the 50th
   promotion within 1.3× of the 2nd.

The workload is an OS-like tree (default 3000 files, ~35 MB, text and binary) of which a share of files
changes per release, like a monthly package update. Stage served over HTTP on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import http.server
import random
import resource
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from _util import median, result  # noqa: E402

from edgeci.record import BuildRecord  # noqa: E402
from edgeci.reposerver import RepoHandler  # noqa: E402
from edgeci.tools import ostree  # noqa: E402
from edgeci.tools.run import run  # noqa: E402

REF = "rhel/9/x86_64/edge"
BP = "bench"
WORDS = ["kernel", "systemd", "glibc", "openssl", "podman", "ostree", "greenboot", "chrony", "sshd", "network",
         "firewall", "selinux", "policy", "journal", "device", "update", "rollback", "version", "package"]


class _Quiet(RepoHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    # ostree opens many connections at once; http.server's default backlog (5) drops SYNs, and each drop
    # costs a 1 s TCP retransmit that lands on either side of the comparison at random.
    request_queue_size = 128
    daemon_threads = True


@contextlib.contextmanager
def serve(directory: Path) -> Iterator[str]:
    httpd = _Server(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(directory)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def build_base(tree: Path, files: int, rng: random.Random) -> list[Path]:
    mod = tree / "usr" / "lib" / "modules" / "6.1.0-bench"
    mod.mkdir(parents=True)
    (mod / "vmlinuz").write_bytes(rng.randbytes(2_000_000))
    (mod / "initramfs.img").write_bytes(rng.randbytes(1_000_000))
    (tree / "usr" / "etc").mkdir(parents=True)
    (tree / "usr" / "etc" / "os-release").write_text('NAME="bench"\n')
    paths = []
    for i in range(files):
        d = tree / "usr" / ("lib64" if i % 4 == 0 else "share") / f"pkg{i % 97:02d}"
        d.mkdir(parents=True, exist_ok=True)
        if i % 4 == 0:  # a shared library: incompressible-ish bytes
            p = d / f"lib{i}.so"
            p.write_bytes(rng.randbytes(rng.randint(4_000, 24_000)))
        else:
            p = d / f"file{i}.txt"
            p.write_text("\n".join(" ".join(rng.choices(WORDS, k=12)) for _ in range(rng.randint(20, 200))))
        paths.append(p)
    return paths


def mutate(paths: list[Path], share: float, version: int, rng: random.Random) -> None:
    """A package update: a share of files changes in part (a patched region, like a rebuilt package)."""
    for p in rng.sample(paths, int(len(paths) * share)):
        data = bytearray(p.read_bytes())
        at = rng.randrange(max(len(data) - 512, 1))
        patch = (f"\n# release {version}\n".encode() if p.suffix == ".txt" else rng.randbytes(256))
        data[at:at + len(patch)] = patch
        p.write_bytes(bytes(data))
    kernel = next((p / "lib" / "modules" / "6.1.0-bench" / "vmlinuz" for p in paths[0].parents
                   if (p / "lib" / "modules" / "6.1.0-bench" / "vmlinuz").is_file()), None)
    if kernel is not None:  # the generated tree's kernel changes every release
        kernel.open("ab").write(rng.randbytes(4096))


def write_record(project: Path, stage_url: str, checksum: str, parent: str | None, version: str) -> None:
    """The record and its signed evidence, as compose, boot-test and an approver would leave them."""
    from edgeci import attest
    from edgeci.evidence import load_signing_key

    rec = BuildRecord(project / "build" / BP / "x86_64" / "record.json")
    rec.set("blueprint", {"name": BP, "version": version, "path": f"blueprints/{BP}.toml", "git_sha": "",
                          "sha256": ""})
    rec.set("lint", {"findings": []})
    rec.set("compose", {"backend": "local", "id": version, "type": "edge-container", "artifact": "",
                        "artifact_sha256": "", "commit": checksum, "parent": parent, "ref": REF, "url": "",
                        "packages": [], "warnings": []})
    digest = "sha256:" + hashlib.sha256(checksum.encode()).hexdigest()
    rec.set("push", {"destination": "oci:bench", "tags": [version], "digest": digest,
                     "image_ref": f"oci:bench@{digest}"})
    rec.set("stage", {"url": stage_url, "commit": checksum, "mode": "serve", "dir": "", "pid": 0})
    rec.set("boot_test", {"backend": "qemu", "scenarios": {s: {"outcome": "passed", "checks": []} for s in
                                                           ("install", "upgrade", "rollback")},
                          "delta_bytes": 0, "full_bytes": 0})
    rec.save()
    keys = project / "trust" / "keys"
    attest.sign_compose(rec, REF, blueprint_path=f"blueprints/{BP}.toml", blueprint_sha256="0" * 64, checks_path="",
                        checks_sha256="", change_authors=("bench-author",),
                        key=load_signing_key("compose", keys / "compose.key"), env={})
    attest.sign_boot_test(rec, REF, checks_sha256="", key=load_signing_key("boot-test", keys / "boot-test.key"),
                          env={})
    attest.sign_approval(rec, REF, approver="bench-approver", comment="",
                         key=load_signing_key("approver", keys / "approver.key"))


def make_trust(project: Path) -> Path:
    """Role keys and the trust policy edgeci's side of the comparison verifies against."""
    from edgeci.evidence import SigningKey, write_key_pair

    for role in ("compose", "boot-test", "approver"):
        write_key_pair(SigningKey.generate(role, name=f"bench-{role}"), project / "trust" / "keys")
    policy = project / "trust" / "trust.yaml"
    policy.write_text("schema: 1\nkeys:\n" + "".join(f"  {r}: [{{file: keys/{r}.pub}}]\n" for r in
                                                     ("compose", "boot-test", "approver"))
                      + "approvals_required: 1\nrequire_signed_production: false\n")
    return policy


def make_project(root: Path, prod: Path, retention: int) -> Path:
    project = root
    (project / "blueprints").mkdir(parents=True)
    (project / "blueprints" / f"{BP}.toml").write_text(f'name = "{BP}"\nversion = "1.0.0"\n')
    (project / "edgeci.yaml").write_text(
        f"prod:\n  repo: {prod}\n  gpg_key: ''\n  delta_from_releases: 1\n  retention: {retention}\n"
        "gate:\n  approvals_required: 1\n")
    make_trust(project)
    return project


CPU: list[float] = []  # CPU seconds (user+sys, the child and everything it started) of the last timed run


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def promote_edgeci(project: Path) -> float:
    cpu = _children_cpu()
    r = run([sys.executable, "-m", "edgeci", "promote", BP, "--config", str(project / "edgeci.yaml"), "--policy",
             str(project / "trust" / "trust.yaml")], cwd=project, check=False, timeout=1800)
    CPU.append(_children_cpu() - cpu)
    if not r.ok:
        raise SystemExit(f"edgeci promote failed:\n{r.stdout}\n{r.stderr}")
    return r.duration


def step_times(project: Path) -> str:
    """The last promotion's step durations, from its JUnit report."""
    import xml.etree.ElementTree as ET

    tree = ET.parse(project / "reports" / f"promote-{BP}-x86_64.xml")
    return " ".join(f"{c.get('name')}={float(c.get('time') or 0):.2f}" for c in tree.iter("testcase"))


def promote_runbook(repo: Path, checksum: str, *, first: bool = False) -> float:
    delta = "" if first else f"ostree --repo={repo} static-delta generate {REF}; "  # release 1 has no parent
    script = (f"set -e; ostree --repo={repo} pull --mirror --depth=1 edge-stage {REF}@{checksum}; "
              f"{delta}ostree --repo={repo} summary -u")
    cpu = _children_cpu()
    r = run(["bash", "-c", script], check=False, timeout=1800)
    CPU.append(_children_cpu() - cpu)
    if not r.ok:
        raise SystemExit(f"runbook failed:\n{r.stderr}")
    return r.duration


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=3000)
    ap.add_argument("--change", type=float, default=0.15, help="share of files changed per release")
    ap.add_argument("--compare", type=int, default=6, help="releases promoted both ways")
    ap.add_argument("--history", type=int, default=50, help="promotions in the history run")
    ap.add_argument("--history-files", type=int, default=600, help="tree size for the history run")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--tree-tar", type=Path, default=None,
                    help="a root filesystem tar as the workload instead of the generated tree (e.g. the device OS's "
                         "cached Debian tree under ~/.cache/edgeci/deviceos); --history 0 skips the history run")
    args = ap.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="edgeci-bench-promote-"))
    ok = True
    try:
        ok &= compare(root / "compare", args)
        if args.history:
            ok &= history(root / "history", args)
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0 if ok else 1


def base_from_tar(tree: Path, tar: Path) -> list[Path]:
    """A real OS tree (the device OS's cached Debian root filesystem) as the workload: its regular files under
    usr/ are what releases change."""
    import subprocess

    tree.mkdir(parents=True)
    subprocess.run(["tar", "-xf", str(tar), "-C", str(tree), "--exclude=./dev/*", "--exclude=./proc/*",
                    "--exclude=./sys/*", "--numeric-owner"], check=True)
    for d in ("dev", "proc", "sys", "run", "tmp"):
        shutil.rmtree(tree / d, ignore_errors=True)
    mod = next((tree / "usr" / "lib" / "modules").iterdir())
    (tree / "usr" / "lib" / "modules" / "6.1.0-bench").symlink_to(mod.name)
    return sorted(p for p in (tree / "usr").rglob("*") if p.is_file() and not p.is_symlink()
                  and p.stat().st_size > 0 and "modules" not in p.parts)


def make_stage(root: Path, files: int, releases: int, share: float, tar: Path | None = None) -> tuple[Path, list[str]]:
    rng = random.Random(6)
    tree, stage = root / "tree", root / "stage" / "repo"
    paths = base_from_tar(tree, tar) if tar else build_base(tree, files, rng)
    ostree.init(stage, "archive")
    commits: list[str] = []
    for v in range(1, releases + 1):
        if v > 1:
            mutate(paths, share, v, rng)
        commits.append(ostree.commit(stage, REF, tree_dir=tree, metadata={"version": f"1.0.{v}"},
                                     parent=commits[-1] if commits else "none"))
    ostree.summary_update(stage)
    return stage, commits


def compare(root: Path, args: argparse.Namespace) -> bool:
    t0 = time.perf_counter()
    stage, commits = make_stage(root, args.files, args.compare + 1, args.change, args.tree_tar)
    files = [f for f in (root / "tree").rglob("*") if f.is_file() and not f.is_symlink()]
    du = sum(f.stat().st_size for f in files)
    print(f"compare: {len(files)} files ({du / 1e6:.0f} MB), {args.change:.0%} changed per release, "
          f"{len(commits)} releases built in {time.perf_counter() - t0:.0f}s", flush=True)
    with serve(stage.parent) as url:
        stage_url = f"{url}/repo"
        runbook_repo, edgeci_repo = root / "prod-runbook" / "repo", root / "prod-edgeci" / "repo"
        ostree.init(runbook_repo, "archive")
        ostree.remote_add(runbook_repo, "edge-stage", stage_url)
        promote_runbook(runbook_repo, commits[0], first=True)
        shutil.copytree(runbook_repo, edgeci_repo, symlinks=True)  # identical starting repositories
        # release 1 came from outside edgeci: its releases log says which version production runs
        from edgeci.production import ReleasesLog

        ReleasesLog(edgeci_repo).append({"ref": REF, "checksum": commits[0], "version": "1.0.1", "previous": None})
        project = make_project(root / "project", edgeci_repo, retention=1000)
        times_rb: list[float] = []
        times_ec: list[float] = []
        cpu_rb: list[float] = []
        cpu_ec: list[float] = []
        for i in range(1, len(commits)):
            version = f"1.0.{i + 1}"
            write_record(project, stage_url, commits[i], commits[i - 1], version)
            if i % 2:  # alternate which side runs first
                rb = promote_runbook(runbook_repo, commits[i])
                ec = promote_edgeci(project)
            else:
                ec = promote_edgeci(project)
                rb = promote_runbook(runbook_repo, commits[i])
            times_rb.append(rb)
            times_ec.append(ec)
            cpu_rb.append(CPU[-2] if i % 2 else CPU[-1])
            cpu_ec.append(CPU[-1] if i % 2 else CPU[-2])
            print(f"  release {version}: runbook {rb:.2f}s  edgeci {ec:.2f}s  ratio {ec / rb:.2f}"
                  f"  [{step_times(project)}]", flush=True)
        assert ostree.rev_parse(runbook_repo, REF) == ostree.rev_parse(edgeci_repo, REF) == commits[-1]
    total = sum(times_ec) / sum(times_rb)
    med = median([e / r for e, r in zip(times_ec, times_rb, strict=True)])
    print(f"compare: runbook total {sum(times_rb):.2f}s, edgeci total {sum(times_ec):.2f}s; "
          f"median per-release ratio {med:.2f}; CPU time ratio {sum(cpu_ec) / sum(cpu_rb):.2f} "
          f"({sum(cpu_ec):.2f}s / {sum(cpu_rb):.2f}s)", flush=True)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"compare: peak RSS of any child process (ostree, edgeci promote): {peak:.0f} MiB", flush=True)
    ok = result("promote_vs_runbook", total, 1.2, "x")
    verify = median([run([sys.executable, "-m", "edgeci", "verify", commits[-1], "--repo", str(edgeci_repo),
                          "--policy", str(project / "trust" / "trust.yaml"), "--config",
                          str(project / "edgeci.yaml")], cwd=project, check=True).duration for _ in range(5)])
    return ok & result("verify_one_release", verify, 1.0, "s")


def history(root: Path, args: argparse.Namespace) -> bool:
    t0 = time.perf_counter()
    stage, commits = make_stage(root, args.history_files, args.history, args.change)
    print(f"history: {args.history_files} files, {len(commits)} releases built in {time.perf_counter() - t0:.0f}s",
          flush=True)
    times: list[float] = []
    cpus: list[float] = []
    steps: list[str] = []
    with serve(stage.parent) as url:
        stage_url = f"{url}/repo"
        prod = root / "prod" / "repo"
        project = make_project(root / "project", prod, retention=args.history + 10)
        for i, c in enumerate(commits):
            write_record(project, stage_url, c, commits[i - 1] if i else None, f"1.0.{i + 1}")
            times.append(promote_edgeci(project))
            cpus.append(CPU[-1])
            steps.append(step_times(project))
        releases = len(ostree.log(prod, REF))
    n = len(times)
    print("history: promotion times (s): " + " ".join(f"{t:.2f}" for t in times), flush=True)
    print(f"history: {releases} commits in production after {n} promotions", flush=True)
    for i in sorted(range(1, n), key=lambda i: times[i])[-3:]:
        print(f"history: slowest #{i + 1}: {times[i]:.2f}s [{steps[i]}]", flush=True)
    for i in sorted(range(1, n), key=lambda i: times[i])[:2]:
        print(f"history: fastest #{i + 1}: {times[i]:.2f}s [{steps[i]}]", flush=True)
    second, last = times[1], times[-1]
    early, late = median(times[1:6]), median(times[-5:])
    print(f"history: 2nd {second:.2f}s, {n}th {last:.2f}s (ratio {last / second:.2f}); "
          f"median of 2nd-6th {early:.2f}s, of last five {late:.2f}s (ratio {late / early:.2f})", flush=True)
    print(f"history: CPU seconds: 2nd {cpus[1]:.2f}, {n}th {cpus[-1]:.2f}; median of 2nd-6th "
          f"{median(cpus[1:6]):.2f}, of last five {median(cpus[-5:]):.2f} "
          f"(ratio {median(cpus[-5:]) / median(cpus[1:6]):.2f})", flush=True)
    return result("promote_history_50th_vs_2nd", late / early, 1.3, "x")


if __name__ == "__main__":
    sys.exit(main())
