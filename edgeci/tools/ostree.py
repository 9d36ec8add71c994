"""Thin typed wrappers over the ostree CLI, one function per subcommand, outputs parsed into values.

Every call goes through edgeci.tools.run. `ostree admin` calls always run inside a user namespace
(`unshare --user --map-root-user`): as real root, `ostree admin deploy` FIFREEZEs the filesystem that
holds SYSROOT/boot, which on a plain directory is the machine's root filesystem (docs/lab.md).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from edgeci.errors import ToolError
from edgeci.tools.run import Completed, run

PathLike = str | os.PathLike[str]
CHECKSUM_RE = re.compile(r"^[0-9a-f]{64}$")
# The namespace every `ostree admin` call runs in (see module docstring).
ADMIN_PREFIX = ("unshare", "--user", "--map-root-user")


def cli(repo: PathLike | None, *args: str, timeout: float | None = 600, check: bool = True,
        env: Mapping[str, str] | None = None) -> Completed:
    argv = ["ostree", *args]
    if repo is not None:
        argv.insert(1, f"--repo={os.fspath(repo)}")
    return run(argv, timeout=timeout, check=check, env=env)


def is_checksum(value: str) -> bool:
    return bool(CHECKSUM_RE.match(value))


# -- repositories ----------------------------------------------------------------------------------

def init(repo: PathLike, mode: str = "archive") -> None:
    """Create a repository (no-op when one already exists there)."""
    if (Path(repo) / "config").is_file():
        return
    Path(repo).mkdir(parents=True, exist_ok=True)
    cli(repo, "init", f"--mode={mode}")


def repo_mode(repo: PathLike) -> str:
    return config_get(repo, "core.mode") or "bare"


def config_get(repo: PathLike, key: str) -> str | None:
    r = cli(repo, "config", "get", key, check=False)
    return r.stdout.strip() if r.ok else None


def config_set(repo: PathLike, key: str, value: str) -> None:
    cli(repo, "config", "set", key, value)


def commit(
    repo: PathLike,
    branch: str,
    *,
    tree_dir: PathLike | None = None,
    tree_ref: str | None = None,
    subject: str = "",
    body: str = "",
    metadata: Mapping[str, str] | None = None,
    parent: str | None = None,
    timestamp: str | None = None,
    owner_root: bool = True,
    orphan: bool = False,
    extra: Sequence[str] = (),
) -> str:
    """Commit a directory (or an existing commit's tree) to `branch`; returns the new checksum.

    `parent` None = the branch's current tip (ostree's default); "none" = no parent.
    """
    args = ["commit", f"--branch={branch}"]
    if orphan:
        args = ["commit", "--orphan"]
    if tree_dir is not None:
        args.append(f"--tree=dir={os.fspath(tree_dir)}")
    if tree_ref is not None:
        args.append(f"--tree=ref={tree_ref}")
    if subject:
        args.append(f"--subject={subject}")
    if body:
        args.append(f"--body={body}")
    for k, v in (metadata or {}).items():
        args.append(f"--add-metadata-string={k}={v}")
    if parent is not None:
        args.append(f"--parent={parent}")
    if timestamp is not None:
        args.append(f"--timestamp={timestamp}")
    if owner_root:
        args += ["--owner-uid=0", "--owner-gid=0"]
    args += list(extra)
    out = cli(repo, *args).stdout.strip()
    if not is_checksum(out):
        raise ToolError(f"ostree commit printed no checksum: {out[:80]!r}", where=os.fspath(repo))
    return out


def rev_parse(repo: PathLike, rev: str) -> str | None:
    """The checksum `rev` (a ref, a checksum, or REV^ for the parent) resolves to; None if it does not."""
    r = cli(repo, "rev-parse", rev, check=False)
    out = r.stdout.strip()
    return out if r.ok and is_checksum(out) else None


def parent(repo: PathLike, checksum: str) -> str | None:
    return rev_parse(repo, f"{checksum}^")


def has_commit(repo: PathLike, checksum: str) -> bool:
    """True when the commit object is present and complete (not a partial pull)."""
    if not is_checksum(checksum):
        return False
    objects = Path(repo) / "objects" / checksum[:2] / f"{checksum[2:]}.commit"
    return objects.is_file() and not is_partial(repo, checksum)


def is_partial(repo: PathLike, checksum: str) -> bool:
    """ostree fsck does not fail on partial commits; the state file is the truth."""
    return (Path(repo) / "state" / f"{checksum}.commitpartial").exists()


def metadata(repo: PathLike, rev: str, key: str) -> str | None:
    """A string metadata key of a commit (GVariant text unquoted), None when absent."""
    r = cli(repo, "show", f"--print-metadata-key={key}", rev, check=False)
    if not r.ok:
        return None
    return _gvariant_string(r.stdout.strip())


def detached_metadata(repo: PathLike, rev: str, key: str) -> str | None:
    r = cli(repo, "show", f"--print-detached-metadata-key={key}", rev, check=False)
    return r.stdout.strip() if r.ok else None


def _gvariant_string(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1].replace("\\'", "'").replace('\\"', '"').replace("\\\\", "\\")
    return text


@dataclass
class CommitInfo:
    checksum: str
    parent: str | None
    subject: str
    date: str
    version: str | None


def show(repo: PathLike, rev: str) -> CommitInfo:
    """Header fields of a commit (ostree show)."""
    out = cli(repo, "show", rev).stdout
    checksum, date, version = "", "", None
    subject_lines = []
    for line in out.splitlines():
        if line.startswith("commit "):
            checksum = line.split()[1]
        elif line.startswith("Date:"):
            date = line.split(":", 1)[1].strip()
        elif line.startswith("Version:"):
            version = line.split(":", 1)[1].strip()
        elif line.startswith("    "):
            subject_lines.append(line.strip())
    return CommitInfo(checksum, parent(repo, checksum), subject_lines[0] if subject_lines else "",
                      date, version)


def log(repo: PathLike, rev: str) -> list[str]:
    """Checksums from `rev` back through its parents that are present in the repo (newest first)."""
    out = cli(repo, "log", rev).stdout
    return [line.split()[1] for line in out.splitlines() if line.startswith("commit ")]


def ls(repo: PathLike, rev: str, path: str = "/", recursive: bool = False) -> list[str]:
    """Paths below `path` in the commit's tree."""
    args = ["ls", rev, path]
    if recursive:
        args.insert(1, "-R")
    out = cli(repo, *args).stdout
    return [line.split(None, 4)[-1].split(" -> ")[0] for line in out.splitlines() if line.strip()]


def cat(repo: PathLike, rev: str, path: str) -> bytes:
    return run(["ostree", f"--repo={os.fspath(repo)}", "cat", rev, path], text=False).stdout  # type: ignore[return-value]


def diff(repo: PathLike, a: str, b: str) -> list[tuple[str, str]]:
    """[(kind, path)] with kind M (modified), A (added), D (deleted) between two commits."""
    out = cli(repo, "diff", a, b).stdout
    result = []
    for line in out.splitlines():
        kind, _, path = line.partition(" ")
        if kind in ("M", "A", "D") and path:
            result.append((kind, path.strip()))
    return result


# -- refs -------------------------------------------------------------------------------------------

def refs(repo: PathLike, prefix: str | None = None) -> list[str]:
    args = ["refs"] + ([prefix] if prefix else [])
    return [line.strip() for line in cli(repo, *args).stdout.splitlines() if line.strip()]


def set_ref(repo: PathLike, ref: str, checksum: str) -> None:
    """Point `ref` at `checksum` (created or moved). Refuses a commit that is missing or partial:
    `ostree refs --create` itself does not check (docs/lab.md)."""
    if not has_commit(repo, checksum):
        raise ToolError(f"refusing to point '{ref}' at {checksum}: the commit is missing or partial",
                        where=os.fspath(repo))
    cli(repo, "refs", "--force", f"--create={ref}", checksum)


def delete_ref(repo: PathLike, ref: str) -> None:
    cli(repo, "refs", "--delete", ref)


# -- remotes and pulls ------------------------------------------------------------------------------

def remote_add(
    repo: PathLike,
    name: str,
    url: str,
    *,
    gpg_verify: bool = False,
    gpg_verify_summary: bool = False,
    options: Mapping[str, str] | None = None,
    sysroot: PathLike | None = None,
) -> None:
    """Add (or replace) a remote."""
    args = ["remote", "add", "--force"]
    if not gpg_verify:
        args.append("--no-gpg-verify")
    else:
        args.append("--set=gpg-verify=true")
        if gpg_verify_summary:
            args.append("--set=gpg-verify-summary=true")
    for k, v in (options or {}).items():
        args.append(f"--set={k}={v}")
    if sysroot is not None:
        args.append(f"--sysroot={os.fspath(sysroot)}")
    args += [name, url]
    cli(repo, *args)


def remote_delete(repo: PathLike, name: str) -> None:
    cli(repo, "remote", "delete", "--if-exists", name)


def remote_gpg_import(repo: PathLike, name: str, keyfile: PathLike) -> None:
    cli(repo, "remote", "gpg-import", name, "-k", os.fspath(keyfile))


def pull(
    repo: PathLike,
    remote: str,
    refs_: Sequence[str],
    *,
    mirror: bool = False,
    depth: int = 0,
    timestamp_check: bool = False,
    require_static_deltas: bool = False,
    disable_static_deltas: bool = False,
    commit_metadata_only: bool = False,
    timeout: float | None = 3600,
) -> Completed:
    """Pull refs (REF or REF@CHECKSUM to pin) from a remote. Returns the run (stdout has the stats)."""
    args = ["pull"]
    if mirror:
        args.append("--mirror")
    if depth:
        args.append(f"--depth={depth}")
    if timestamp_check:
        args.append("--timestamp-check")
    if require_static_deltas:
        args.append("--require-static-deltas")
    if disable_static_deltas:
        args.append("--disable-static-deltas")
    if commit_metadata_only:
        args.append("--commit-metadata-only")
    args += [remote, *refs_]
    return cli(repo, *args, timeout=timeout)


def pull_local(repo: PathLike, src_repo: PathLike, refs_: Sequence[str], *, depth: int = 0,
               untrusted: bool = False) -> None:
    """`untrusted`: verify every object's checksum (pull-local trusts local sources by default)."""
    args = ["pull-local"]
    if depth:
        args.append(f"--depth={depth}")
    if untrusted:
        args.append("--untrusted")
    cli(repo, *args, os.fspath(src_repo), *refs_)


# -- deltas, summary, signing, maintenance --------------------------------------------------------

def static_delta_generate(
    repo: PathLike,
    to: str,
    *,
    from_: str | None = None,
    empty: bool = False,
    extra: Sequence[str] = (),
    timeout: float | None = 3600,
) -> None:
    args = ["static-delta", "generate", f"--to={to}"]
    if empty:
        args.append("--empty")
    elif from_:
        args.append(f"--from={from_}")
    args += list(extra)
    cli(repo, *args, timeout=timeout)


def static_delta_list(repo: PathLike) -> list[str]:
    """Delta names: 'FROM-TO' or 'TO' for from-empty deltas (ostree's modified-base64 checksums)."""
    out = cli(repo, "static-delta", "list").stdout
    return [line.strip() for line in out.splitlines() if line.strip() and "(No static deltas)" not in line]


def summary_update(repo: PathLike, *, gpg_key: str | None = None, gpg_homedir: PathLike | None = None) -> None:
    args = ["summary", "-u"]
    if gpg_key:
        args.append(f"--gpg-sign={gpg_key}")
        if gpg_homedir:
            args.append(f"--gpg-homedir={os.fspath(gpg_homedir)}")
    cli(repo, *args)


def gpg_sign(repo: PathLike, checksum: str, key_id: str, homedir: PathLike | None = None) -> None:
    args = ["gpg-sign"]
    if homedir:
        args.append(f"--gpg-homedir={os.fspath(homedir)}")
    cli(repo, *args, checksum, key_id)


def sign_supported() -> bool:
    """True when this ostree build implements `ostree sign` (ed25519); Debian's 2022.7 does not."""
    r = run(["ostree", "sign", "--help"], check=False)
    if not r.ok:
        return False
    r = run(["ostree", "sign", "--list-keys", "--sign-type=ed25519"], check=False)
    return "not implemented" not in (r.stderr + r.stdout)


def sign_ed25519(repo: PathLike, checksum: str, keyfile: PathLike) -> None:
    cli(repo, "sign", "--sign-type=ed25519", f"--keys-file={os.fspath(keyfile)}", checksum)


def fsck(repo: PathLike, *, timeout: float | None = 3600) -> Completed:
    return cli(repo, "fsck", timeout=timeout)


def prune(repo: PathLike, *, refs_only: bool = True, depth: int | None = None,
          keep_younger_than: str | None = None) -> Completed:
    """Delete objects no ref reaches (within `depth` parents); static deltas of pruned commits go too."""
    args = ["prune"]
    if refs_only:
        args.append("--refs-only")
    if depth is not None:
        args.append(f"--depth={depth}")
    if keep_younger_than:
        args.append(f"--keep-younger-than={keep_younger_than}")
    return cli(repo, *args)


# -- admin (always in a user namespace) -----------------------------------------------------------

def admin(*args: str, timeout: float | None = 600) -> Completed:
    return run([*ADMIN_PREFIX, "ostree", "admin", *args], timeout=timeout)


def admin_init_fs(sysroot: PathLike) -> None:
    Path(sysroot).mkdir(parents=True, exist_ok=True)
    admin("init-fs", os.fspath(sysroot))


def admin_os_init(sysroot: PathLike, osname: str) -> None:
    admin("os-init", f"--sysroot={os.fspath(sysroot)}", osname)


def admin_deploy(sysroot: PathLike, osname: str, refspec: str, *, kargs: Sequence[str] = (),
                 retain: bool = True) -> None:
    args = ["deploy", f"--sysroot={os.fspath(sysroot)}", f"--os={osname}"]
    if retain:
        args.append("--retain")
    args += [f"--karg={k}" for k in kargs]
    args.append(refspec)
    admin(*args)


def admin_status(sysroot: PathLike) -> str:
    return admin("status", f"--sysroot={os.fspath(sysroot)}").stdout


def admin_remote_pull(sysroot: PathLike, remote: str, ref: str) -> Completed:
    """Pull into a sysroot's repo (runs in the user namespace too, so ownership stays consistent)."""
    repo = Path(sysroot) / "ostree" / "repo"
    return run([*ADMIN_PREFIX, "ostree", f"--repo={repo}", "pull", remote, ref], timeout=3600)


def admin_pull(sysroot: PathLike, remote: str, refspec: str, *, timeout: float | None = 3600) -> Completed:
    """Pull REF or REF@CHECKSUM into a sysroot's repo (in the user namespace); stdout has the statistics."""
    repo = Path(sysroot) / "ostree" / "repo"
    return run([*ADMIN_PREFIX, "ostree", f"--repo={repo}", "pull", remote, refspec], timeout=timeout)


def admin_set_ref(sysroot: PathLike, ref: str, checksum: str) -> None:
    """Point a ref (REMOTE:REF allowed) of a sysroot's repo at a commit it holds, e.g. so that the next
    pull from that remote finds the static delta from what the device runs."""
    repo = Path(sysroot) / "ostree" / "repo"
    run([*ADMIN_PREFIX, "ostree", f"--repo={repo}", "refs", "--force", f"--create={ref}", checksum])


@dataclass
class Deployment:
    osname: str
    checksum: str
    serial: int
    booted: bool = False

    def root(self, sysroot: PathLike) -> Path:
        return Path(sysroot) / "ostree" / "deploy" / self.osname / "deploy" / f"{self.checksum}.{self.serial}"


_DEPLOYMENT_RE = re.compile(r"^\s*(\*\s+)?(\S+)\s+([0-9a-f]{64})\.(\d+)")


def admin_deployments(sysroot: PathLike) -> list[Deployment]:
    """Deployments in boot order (the first is the default), from `ostree admin status`."""
    out = []
    for line in admin_status(sysroot).splitlines():
        m = _DEPLOYMENT_RE.match(line)
        if m:
            out.append(Deployment(m.group(2), m.group(3), int(m.group(4)), booted=bool(m.group(1))))
    return out


# `ostree admin` 2022.7 has no rollback/set-default: reorder through libostree, whose Python bindings
# import only in Debian's own interpreter (docs/lab.md), run as a tool in the same user namespace.
SYSTEM_PYTHON = "/usr/bin/python3"
_SET_DEFAULT = """
import sys
import gi
gi.require_version("OSTree", "1.0")
from gi.repository import Gio, OSTree
sysroot = OSTree.Sysroot.new(Gio.File.new_for_path(sys.argv[1]))
sysroot.load(None)
deployments = list(sysroot.get_deployments())
index = int(sys.argv[2])
if not 0 <= index < len(deployments):
    sys.exit("no deployment %d (there are %d)" % (index, len(deployments)))
chosen = deployments.pop(index)
sysroot.write_deployments([chosen] + deployments, None)
print(chosen.get_csum())
"""


def admin_set_default(sysroot: PathLike, index: int) -> str:
    """Make deployment `index` (0 = current default) the default, like `rpm-ostree rollback` does for 1.
    Rewrites the boot entries; returns the new default's checksum."""
    if not Path(SYSTEM_PYTHON).is_file():
        raise ToolError(f"{SYSTEM_PYTHON} is missing (libostree's Python bindings run only there)",
                        fix="install it: apt-get install python3-gi gir1.2-ostree-1.0")
    r = run([*ADMIN_PREFIX, SYSTEM_PYTHON, "-c", _SET_DEFAULT, os.fspath(sysroot), str(index)], check=False)
    if not r.ok:
        detail = (r.stderr.strip().splitlines() or ["no output"])[-1]
        fix = ("install python3-gi gir1.2-ostree-1.0" if "gi" in detail.lower() and "module" in detail.lower()
               else None)
        raise ToolError(f"cannot change the default deployment of {os.fspath(sysroot)}: {detail}",
                        argv=r.argv, returncode=r.returncode, stderr=r.stderr, fix=fix)
    return r.stdout.strip().splitlines()[-1]


# -- used by promotion (edgeci/promote.py) ------------------------------------------------------------

def remote_url(repo: PathLike, name: str) -> str | None:
    """The URL of remote `name`, None when the repo has no such remote."""
    r = cli(repo, "remote", "show-url", name, check=False)
    return r.stdout.strip() if r.ok and r.stdout.strip() else None


_KEY_ID_RE = re.compile(r"key ID ([0-9A-Fa-f]{8,40})")


def signature_key_ids(repo: PathLike, rev: str, homedir: PathLike | None = None) -> list[str]:
    """Key IDs (upper-case hex, as ostree prints them) of the GPG signatures attached to a commit."""
    args = ["show"]
    if homedir:
        args.append(f"--gpg-homedir={os.fspath(homedir)}")
    r = cli(repo, *args, rev, check=False)
    return [m.group(1).upper() for m in _KEY_ID_RE.finditer(r.stdout + r.stderr)] if r.ok else []


# Verify a commit's objects with libostree's fsck_object (checksums recomputed, missing objects fail).
# With a second commit, only the objects that differ from it are checked: subtrees whose dirtree and
# dirmeta checksums are equal are skipped, so the cost follows the size of the change, not of the tree.
_FSCK_COMMIT = """
import sys
import gi
gi.require_version("OSTree", "1.0")
from gi.repository import Gio, OSTree
T = OSTree.ObjectType
repo = OSTree.Repo.new(Gio.File.new_for_path(sys.argv[1]))
repo.open(None)
new, old = sys.argv[2], (sys.argv[3] if len(sys.argv) > 3 else "")
hexsum = OSTree.checksum_from_bytes_v
todo = [(T.COMMIT, new)]

def root(commit):
    v = repo.load_variant(T.COMMIT, commit)[1]
    return hexsum(v.get_child_value(6)), hexsum(v.get_child_value(7))

def entries(tree):
    v = repo.load_variant(T.DIR_TREE, tree)[1]
    fv, dv = v.get_child_value(0), v.get_child_value(1)
    files = {}
    for i in range(fv.n_children()):
        c = fv.get_child_value(i)
        files[c.get_child_value(0).get_string()] = hexsum(c.get_child_value(1))
    dirs = {}
    for i in range(dv.n_children()):
        c = dv.get_child_value(i)
        dirs[c.get_child_value(0).get_string()] = (hexsum(c.get_child_value(1)), hexsum(c.get_child_value(2)))
    return files, dirs

def walk(tree, meta, otree, ometa):
    if meta != ometa:
        todo.append((T.DIR_META, meta))
    if tree == otree:
        return
    todo.append((T.DIR_TREE, tree))
    files, dirs = entries(tree)
    ofiles, odirs = entries(otree) if otree else ({}, {})
    for name, csum in files.items():
        if ofiles.get(name) != csum:
            todo.append((T.FILE, csum))
    for name, (t, m) in dirs.items():
        ot, om = odirs.get(name, (None, None))
        walk(t, m, ot, om)

ot, om = root(old) if old else (None, None)
nt, nm = root(new)
walk(nt, nm, ot, om)
objects = list(dict.fromkeys(todo))
errors = []

def check(chunk):
    # PyGObject releases the GIL inside libostree: checksumming runs on every core
    try:
        for kind, csum in chunk:
            repo.fsck_object(kind, csum, None)
    except Exception as e:
        errors.append(str(e))

import os, threading
n = max(1, min(4, os.cpu_count() or 1))
threads = [threading.Thread(target=check, args=(objects[i::n],)) for i in range(n)]
for t in threads:
    t.start()
for t in threads:
    t.join()
if errors:
    sys.exit(errors[0])
print(len(objects))
"""


def fsck_commit(repo: PathLike, checksum: str, *, since: str | None = None, timeout: float | None = 3600) -> int:
    """Verify every object of commit `checksum` (or only those that differ from commit `since`, which must
    be complete in the repo): recompute checksums, fail on missing or corrupted objects. Returns the number
    of objects checked. `ostree fsck` itself checks the whole repository and cannot be limited to a commit."""
    if not Path(SYSTEM_PYTHON).is_file():
        raise ToolError(f"{SYSTEM_PYTHON} is missing (libostree's Python bindings run only there)",
                        fix="install it: apt-get install python3-gi gir1.2-ostree-1.0")
    argv = [SYSTEM_PYTHON, "-c", _FSCK_COMMIT, os.fspath(repo), checksum] + ([since] if since else [])
    r = run(argv, check=False, timeout=timeout)
    if not r.ok:
        detail = (r.stderr.strip().splitlines() or ["no output"])[-1]
        raise ToolError(f"fsck of commit {checksum} in {os.fspath(repo)} failed: {detail}",
                        argv=r.argv, returncode=r.returncode, stderr=r.stderr,
                        fix="re-run the promotion (it pulls missing objects again); run 'ostree fsck' on the repo")
    return int(r.stdout.strip().splitlines()[-1])
