"""Local approvals (the embedded default): JSON files bound to the commit checksum, and who the authors are.

build/<bp>/<arch>/approvals/<checksum>/<user>.json — written by `edgeci approve BLUEPRINT --as NAME`.
Approvals of an earlier candidate stay where they are and are reported as approving another checksum.
Authors (whose approvals never count): every author, committer and Co-authored-by trailer of every commit that
touched the blueprint or its checks file since production's release (the whole history for a first release),
the git author of HEAD, and the identities CI gives ($EDGECI_AUTHOR, $GITLAB_USER_LOGIN, $BUILD_USER_ID).
When they cannot be determined (not in git, a symlink out of the repository, a shallow clone without the
release's commit) no approval counts.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from edgeci.approvals import Source
from edgeci.errors import GateError
from edgeci.policy import CHECKSUM_RE, Approval, Evidence, Person
from edgeci.record import atomic_write_text, now_iso

if TYPE_CHECKING:
    from edgeci.record import Candidate

APPROVALS_DIR = "approvals"
# Identities CI systems give the person who started the run (GitLab, Jenkins build-user-vars, any).
AUTHOR_ENV = (("EDGECI_AUTHOR", "author"), ("GITLAB_USER_LOGIN", "pipeline triggerer"),
              ("GITLAB_USER_EMAIL", "pipeline triggerer"), ("BUILD_USER_ID", "pipeline triggerer"),
              ("BUILD_USER_EMAIL", "pipeline triggerer"))


def _file_name(user: str) -> str:
    return re.sub(r"[^A-Za-z0-9._@+-]", "_", user.strip()) or "_"


def approvals_dir(work_dir: Path) -> Path:
    return work_dir / APPROVALS_DIR


def write_approval(work_dir: Path, checksum: str, user: str, *, comment: str = "", when: str | None = None) -> Path:
    """Record that `user` approves `checksum` (atomic; approving again replaces the earlier file)."""
    if not CHECKSUM_RE.match(checksum):
        raise GateError(f"'{checksum}' is not a commit checksum", fix="run 'edgeci compose' first")
    if not user.strip():
        raise GateError("the approver's name is empty", fix="pass --as NAME")
    path = approvals_dir(work_dir) / checksum / f"{_file_name(user)}.json"
    data = {"user": user.strip(), "checksum": checksum, "time": when or now_iso(), "comment": comment,
            "source": "local"}
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
    return path


def read_approvals(work_dir: Path, candidate: str | None = None) -> list[Approval]:
    """Every stored approval, of any checksum (the policy rejects those of another candidate).

    With `candidate`, approvals properly bound to an earlier candidate are left out: they are the history of
    earlier releases, not evidence about this one. A file whose directory and content disagree is still
    returned (bound to nothing), so the policy reports it."""
    root = approvals_dir(work_dir)
    out: list[Approval] = []
    if not root.is_dir():
        return out
    for path in sorted(root.glob("*/*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise GateError(f"cannot read approval: {e}", where=str(path),
                            fix="delete the file and approve again") from None
        named = str(data.get("checksum", ""))
        # The file is bound twice (its directory and its content); a disagreement binds to nothing.
        checksum = named if named == path.parent.name else ""
        if candidate and checksum and checksum != candidate:
            continue
        user = str(data.get("user", ""))
        out.append(Approval(user=user, checksum=checksum, time=str(data.get("time", "")), source="local",
                            comment=str(data.get("comment", "")), groups=unix_groups(user)))
    out.sort(key=lambda a: a.time)
    return out


def unix_groups(user: str) -> frozenset[str]:
    """The local account's groups (the local source's notion of group membership)."""
    import grp
    import pwd

    groups = {g.gr_name for g in grp.getgrall() if user in g.gr_mem}
    try:
        groups.add(grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name)
    except (KeyError, OSError):
        pass
    return frozenset(groups)


@dataclass
class Authorship:
    """Who wrote the change being approved: every author, committer and Co-authored-by trailer of every commit
    touching the blueprint or its checks file since production's release; `unknown` says why they cannot be
    determined ("" when they can) — the gate then counts no approval."""

    people: list[Person] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    unknown: str = ""


def _inside(top: Path, path: Path) -> str | None:
    """`path` relative to the repository root when it is a regular file inside it (no symlink), else None."""
    try:
        if path.is_symlink():
            return None
        return path.resolve().relative_to(top.resolve()).as_posix()
    except (ValueError, OSError):
        return None


def authorship(blueprint_path: Path | None, *, since: str | None = None, rev: str | None = None,
               extra_paths: tuple[str, ...] = ()) -> Authorship:
    """The change's people from git (see Authorship). `since`: the git sha production's release was built from
    (None = first release or unknown: the whole history); `rev`: the commit the candidate was built from
    (default HEAD); `extra_paths`: more repository paths to include (the blueprint's path at the release)."""
    from edgeci.tools import git

    out = Authorship()
    if blueprint_path is None:
        out.unknown = "there is no blueprint file to read its git history from"
        return out
    bp = Path(blueprint_path)
    top = git.toplevel(bp)
    if top is None:
        out.unknown = f"{bp} is not in a git repository"
        return out
    rel = _inside(top, bp)
    if rel is None:
        out.unknown = f"{bp} is a symbolic link or leaves the repository {top}"
        return out
    checks = bp.with_name(f"{bp.stem}.checks.yaml")
    paths = [rel]
    if checks.exists() or checks.is_symlink():
        crel = _inside(top, checks)
        if crel is None:
            out.unknown = f"{checks} is a symbolic link or leaves the repository {top}"
            return out
        paths.append(crel)
    else:
        paths.append(str(Path(rel).with_name(checks.name)))
    paths += [p for p in extra_paths if p and p not in paths]
    head = git.rev_parse(top, rev) if rev else None
    if rev and head is None:
        out.notes.append(f"the commit the candidate was built from ({rev[:12]}) is not in this clone: using HEAD")
    head = head or git.rev_parse(top, "HEAD")
    if head is None:
        out.unknown = f"the repository {top} has no commit"
        return out
    if git.committed_blob(top, head, rel) is None:
        out.unknown = f"{rel} is not committed in {head[:12]}"
        return out
    start = None
    if since:
        found = git.rev_parse(top, since)
        if found is not None and git.is_ancestor(top, found, head):
            start = found
        elif found is not None:
            out.notes.append(f"production's release was built from {since[:12]}, which is not an ancestor of "
                             f"{head[:12]}: every commit of the blueprint's history counts")
        elif git.is_shallow(top):
            out.unknown = (f"production's release was built from {since[:12]}, which this shallow clone does not "
                           "have (fetch the whole history: GitLab GIT_DEPTH: 0, or git fetch --unshallow)")
            return out
        else:
            out.notes.append(f"production's release was built from {since[:12]}, which this repository does not "
                             "have: every commit of the blueprint's history counts")
    if start is None and git.is_shallow(top):
        out.unknown = ("this is a shallow clone, so the blueprint's history is incomplete (fetch the whole "
                       "history: GitLab GIT_DEPTH: 0, or git fetch --unshallow)")
        return out
    commits = git.commits_touching(top, paths, since=start, rev=head)
    seen: set[tuple[str, tuple[str, str]]] = set()

    def add(role: str, who: tuple[str, str]) -> None:
        if (role, who) not in seen and any(who):
            seen.add((role, who))
            out.people.append(Person(role, who))

    head_commit = git.last_commit(top, head)
    if head_commit is not None:
        add("commit author", (head_commit.author_email, head_commit.author_name))
    if commits:
        last = commits[0]
        add("blueprint's last committer", last.author)
        add("blueprint's last committer", last.committer)
    for c in commits:
        add("change author", c.author)
        add("change committer", c.committer)
        for co in c.co_authors:
            add("change co-author", co)
    if not commits and start is None:
        out.unknown = f"no commit touches {rel} up to {head[:12]}"
    return out


def git_people(blueprint_path: Path | None, *, since: str | None = None,
               rev: str | None = None) -> tuple[list[Person], list[str]]:
    """The change's people and notes (see authorship); what makes them unknown is one of the notes."""
    a = authorship(blueprint_path, since=since, rev=rev)
    return a.people, a.notes + ([f"authors unknown: {a.unknown}"] if a.unknown else [])


def env_people(env: Mapping[str, str]) -> list[Person]:
    people = []
    for var, role in AUTHOR_ENV:
        value = env.get(var, "").strip()
        if value:
            people.append(Person(role, (value,)))
    return people


def head_author(blueprint_path: Path | None, env: Mapping[str, str] | None = None) -> str:
    """The author identity for local runs: $EDGECI_AUTHOR / $GITLAB_USER_LOGIN / $BUILD_USER_ID, else git's."""
    env = os.environ if env is None else env
    for var in ("EDGECI_AUTHOR", "GITLAB_USER_LOGIN", "BUILD_USER_ID"):
        if env.get(var, "").strip():
            return env[var].strip()
    people, _ = git_people(blueprint_path)
    for p in people:
        if p.role == "commit author":
            return p.identities[0]
    return ""


def collect(work_dir: Path, blueprint_path: Path | None, env: Mapping[str, str] | None = None,
            candidate: str | None = None, *, since: str | None = None, rev: str | None = None) -> Evidence:
    """Evidence for the policy from the local approval files (of `candidate`, when given) and the local authors."""
    env = os.environ if env is None else env
    a = authorship(blueprint_path, since=since, rev=rev)
    return Evidence(approvals=read_approvals(work_dir, candidate), people=a.people + env_people(env),
                    notes=a.notes, authors_unknown=a.unknown)


class LocalSource(Source):
    """Approval files under the build directory (`edgeci approve`), and the local authors."""

    name = "local"

    def collect(self, candidate: Candidate) -> Evidence:
        """The approval files and CI identities; gather() adds the change's git authors."""
        return Evidence(approvals=read_approvals(self.ctx.work_dir, candidate.checksum),
                        people=env_people(self.ctx.env))
