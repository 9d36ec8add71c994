"""Thin typed wrappers over the git CLI, one function per subcommand, outputs parsed into values.

Every call goes through edgeci.tools.run with `git -C REPO`, LC_ALL=C (messages we parse stay in
English) and GIT_TERMINAL_PROMPT=0 (a CI job must fail, not wait for a password).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from edgeci.tools.run import Completed, have, run

PathLike = str | os.PathLike[str]
ZERO_SHA = "0" * 40
_ENV = {"LC_ALL": "C", "GIT_TERMINAL_PROMPT": "0", "GIT_OPTIONAL_LOCKS": "0"}


def cli(repo: PathLike, *args: str, check: bool = True, timeout: float | None = 120) -> Completed:
    return run(["git", "-C", os.fspath(repo), *args], check=check, timeout=timeout, env=_ENV)


def toplevel(path: PathLike) -> Path | None:
    """The root of the work tree that holds `path` (a file or directory), or None outside git."""
    p = Path(path)
    d = p if p.is_dir() else p.parent
    if not have("git") or not d.is_dir():
        return None
    r = cli(d, "rev-parse", "--show-toplevel", check=False)
    return Path(r.stdout.strip()) if r.ok and r.stdout.strip() else None


def rev_parse(repo: PathLike, rev: str) -> str | None:
    """The commit SHA `rev` names, or None when this repository does not have it."""
    r = cli(repo, "rev-parse", "--verify", "--quiet", "--end-of-options", f"{rev}^{{commit}}", check=False)
    sha = r.stdout.strip()
    return sha if r.ok and sha else None


def is_shallow(repo: PathLike) -> bool:
    r = cli(repo, "rev-parse", "--is-shallow-repository", check=False)
    return r.stdout.strip() == "true"


def merge_base(repo: PathLike, a: str, b: str) -> str | None:
    """The best common ancestor of a and b, or None when there is none (in this possibly shallow clone)."""
    r = cli(repo, "merge-base", a, b, check=False)
    sha = r.stdout.strip()
    return sha if r.ok and sha else None


@dataclass(frozen=True)
class DiffEntry:
    """One line of `git diff --name-status`: status letter (A, M, D, R, C, T), path, and the old path for R/C."""

    status: str
    path: str
    old_path: str | None = None
    score: int | None = None  # similarity percentage for R/C


def diff_name_status(repo: PathLike, base: str, head: str, *, renames: bool = True,
                     paths: list[str] | None = None) -> list[DiffEntry]:
    """`git diff --name-status -M -z BASE HEAD [-- PATHS]` (two commits: exactly base → head)."""
    args = ["diff", "--name-status", "-z", "--no-color", "--no-ext-diff"]
    args.append("-M" if renames else "--no-renames")
    args += [base, head]
    if paths:
        args += ["--", *paths]
    out = cli(repo, *args).stdout
    fields = out.split("\0")
    entries: list[DiffEntry] = []
    i = 0
    while i < len(fields) and fields[i]:
        status = fields[i]
        letter = status[:1]
        if letter in ("R", "C"):
            old, new = fields[i + 1], fields[i + 2]
            score = int(status[1:]) if status[1:].isdigit() else None
            entries.append(DiffEntry(letter, new, old, score))
            i += 3
        else:
            entries.append(DiffEntry(letter, fields[i + 1]))
            i += 2
    return entries


def exists(repo: PathLike, rev: str, path: str) -> bool:
    """Whether `path` (relative to the repository root) exists in commit `rev`."""
    return cli(repo, "cat-file", "-e", f"{rev}:{path}", check=False).ok


def show(repo: PathLike, rev: str, path: str) -> str | None:
    """`git show REV:PATH` — the file's text at that revision, or None when it does not exist there."""
    if not exists(repo, rev, path):
        return None
    return cli(repo, "show", f"{rev}:{path}").stdout


def ls_tree(repo: PathLike, rev: str, directory: str) -> list[str]:
    """Paths (relative to the repository root) of the files directly inside `directory` at `rev`."""
    d = directory.strip("/")
    spec = f"{d}/" if d and d != "." else "."
    r = cli(repo, "ls-tree", "-z", "--name-only", "--full-tree", rev, "--", spec)
    return [p for p in r.stdout.split("\0") if p]


@dataclass(frozen=True)
class CommitInfo:
    sha: str
    author_name: str
    author_email: str
    committer_name: str
    committer_email: str
    time: int  # committer time, seconds since the epoch
    subject: str


def last_commit(repo: PathLike, rev: str = "HEAD", path: str | None = None) -> CommitInfo | None:
    """`git log -1` at rev (optionally the last commit touching path); None when there is none."""
    args = ["log", "-1", "--format=%H%x00%an%x00%ae%x00%cn%x00%ce%x00%ct%x00%s", rev]
    if path:
        args += ["--", path]
    r = cli(repo, *args, check=False)
    if not r.ok or not r.stdout.strip():
        return None
    parts = r.stdout.rstrip("\n").split("\0")
    if len(parts) < 7:
        return None
    sha, an, ae, cn, ce, ct, subject = parts[:7]
    return CommitInfo(sha, an, ae, cn, ce, int(ct) if ct.isdigit() else 0, subject)


def head_sha(path: PathLike) -> str:
    """HEAD's SHA of the repository holding `path`, or "" outside git (or without git installed)."""
    top = toplevel(path)
    if top is None:
        return ""
    return rev_parse(top, "HEAD") or ""


def committed_blob(repo: PathLike, rev: str, path: str) -> str | None:
    """The blob id of `path` (relative to the repository root) in commit `rev`, or None when it is not there."""
    r = cli(repo, "rev-parse", "--verify", "--quiet", "--end-of-options", f"{rev}:{path}", check=False)
    sha = r.stdout.strip()
    return sha if r.ok and sha else None


def hash_file(repo: PathLike, path: str) -> str:
    """The blob id git would give the file's bytes as they are on disk (no filters, nothing written)."""
    return cli(repo, "hash-object", "--no-filters", "--", path).stdout.strip()


def uncommitted(repo: PathLike, paths: list[str], rev: str = "HEAD") -> list[tuple[str, str]]:
    """(path, why) for each path whose bytes on disk are not exactly its content in `rev`: untracked, staged
    or modified. Compared by blob id, so `git update-index --assume-unchanged` does not hide a change."""
    out: list[tuple[str, str]] = []
    for p in paths:
        blob = committed_blob(repo, rev, p)
        if blob is None:
            out.append((p, "is not committed"))
        elif hash_file(repo, p) != blob:
            out.append((p, "has uncommitted changes"))
    return out


def is_ancestor(repo: PathLike, a: str, b: str) -> bool:
    """Whether commit a is an ancestor of (or equal to) commit b."""
    return cli(repo, "merge-base", "--is-ancestor", a, b, check=False).ok


@dataclass(frozen=True)
class CommitPeople:
    """The people of one commit: its author, its committer and its Co-authored-by trailers."""

    sha: str
    author: tuple[str, str]  # (email, name)
    committer: tuple[str, str]
    co_authors: tuple[tuple[str, str], ...] = ()


def _split_trailer(value: str) -> tuple[str, str]:
    """'Name <email>' → (email, name); a bare value is both."""
    value = value.strip()
    if value.endswith(">") and "<" in value:
        name, _, email = value[:-1].rpartition("<")
        return email.strip(), name.strip()
    return value, value


def commits_touching(repo: PathLike, paths: list[str], *, since: str | None = None,
                     rev: str = "HEAD") -> list[CommitPeople]:
    """Every commit in `since..rev` (the whole history of rev when since is None) that touched any of `paths`,
    newest first, with author, committer and Co-authored-by trailers."""
    fmt = "%H%x00%ae%x00%an%x00%ce%x00%cn%x00%(trailers:key=Co-authored-by,valueonly,separator=%x01)%x1e"
    spec = f"{since}..{rev}" if since else rev
    out = cli(repo, "log", "--full-history", f"--format={fmt}", spec, "--", *paths).stdout
    commits: list[CommitPeople] = []
    for entry in out.split("\x1e"):
        entry = entry.strip("\n")
        if not entry:
            continue
        parts = entry.split("\0")
        if len(parts) < 6:
            continue
        sha, ae, an, ce, cn, trailers = parts[:6]
        co = tuple(_split_trailer(t) for t in trailers.replace("\n", "\x01").split("\x01") if t.strip())
        commits.append(CommitPeople(sha, (ae, an), (ce, cn), co))
    return commits


def ls_files(repo: PathLike, path: str) -> bool:
    """Whether `path` is tracked in the index."""
    r = cli(repo, "ls-files", "--error-unmatch", "--", path, check=False)
    return r.ok
