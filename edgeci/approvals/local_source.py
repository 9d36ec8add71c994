"""Local approvals (the embedded default): JSON files bound to the commit checksum, and who the authors are.

build/<bp>/<arch>/approvals/<checksum>/<user>.json — written by `edgeci approve BLUEPRINT --as NAME`.
Approvals of an earlier candidate stay where they are and are reported as approving another checksum.
Authors (whose approvals never count): the git author of HEAD, the blueprint's last committer, and the
identities CI gives ($EDGECI_AUTHOR, $GITLAB_USER_LOGIN, $BUILD_USER_ID).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from edgeci.errors import GateError
from edgeci.policy import CHECKSUM_RE, Approval, Evidence, Person
from edgeci.record import atomic_write_text

if TYPE_CHECKING:
    from edgeci.approvals import SourceContext
    from edgeci.record import Candidate

APPROVALS_DIR = "approvals"
# Identities CI systems give the person who started the run (GitLab, Jenkins build-user-vars, any).
AUTHOR_ENV = (("EDGECI_AUTHOR", "author"), ("GITLAB_USER_LOGIN", "pipeline triggerer"),
              ("GITLAB_USER_EMAIL", "pipeline triggerer"), ("BUILD_USER_ID", "pipeline triggerer"),
              ("BUILD_USER_EMAIL", "pipeline triggerer"))


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


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
    data = {"user": user.strip(), "checksum": checksum, "time": when or _now(), "comment": comment,
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


def git_people(blueprint_path: Path | None) -> tuple[list[Person], list[str]]:
    """The commit author of HEAD and the blueprint's last committer, from the git repository that holds
    the blueprint; notes say what could not be determined."""
    from edgeci.tools import git

    people: list[Person] = []
    notes: list[str] = []
    if blueprint_path is None:
        return people, ["no blueprint file: the git author and last committer are not known"]
    top = git.toplevel(blueprint_path)
    if top is None:
        return people, [f"{blueprint_path} is not in a git repository: its author and last committer are unknown"]
    head = git.last_commit(top, "HEAD")
    if head is not None:
        people.append(Person("commit author", (head.author_email, head.author_name)))
    try:
        rel = str(Path(blueprint_path).resolve().relative_to(top.resolve()))
    except ValueError:
        rel = str(blueprint_path)
    last = git.last_commit(top, "HEAD", path=rel)
    if last is not None:
        people.append(Person("blueprint's last committer", (last.author_email, last.author_name)))
        if (last.committer_email, last.committer_name) != (last.author_email, last.author_name):
            people.append(Person("blueprint's last committer", (last.committer_email, last.committer_name)))
    else:
        notes.append(f"{rel} has no commit yet: its last committer is unknown")
    return people, notes


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
            candidate: str | None = None) -> Evidence:
    """Evidence for the policy from the local approval files (of `candidate`, when given) and the local authors."""
    env = os.environ if env is None else env
    people, notes = git_people(blueprint_path)
    people += env_people(env)
    return Evidence(approvals=read_approvals(work_dir, candidate), people=people, notes=notes)


class LocalSource:
    """Approval files under the build directory (`edgeci approve`), and the local authors."""

    name = "local"

    def __init__(self, ctx: SourceContext) -> None:
        self.ctx = ctx

    def collect(self, candidate: Candidate) -> Evidence:
        return collect(self.ctx.work_dir, self.ctx.blueprint_path, env=self.ctx.env, candidate=candidate.checksum)
