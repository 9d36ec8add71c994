"""Thin typed wrappers over the ostree CLI, one function per subcommand, outputs parsed into values.

Every call goes through edgeci.tools.run. `ostree admin` calls always run inside a user namespace
(`unshare --user --map-root-user`): as real root, `ostree admin deploy` FIFREEZEs the filesystem that
holds SYSROOT/boot, which on a plain directory is the machine's root filesystem (LAB.md).
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
    `ostree refs --create` itself does not check (LAB.md)."""
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


def pull_local(repo: PathLike, src_repo: PathLike, refs_: Sequence[str], *, depth: int = 0) -> None:
    args = ["pull-local"]
    if depth:
        args.append(f"--depth={depth}")
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
