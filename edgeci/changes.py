"""Which blueprints a git range touched, for CI fan-out (one job per changed blueprint × arch).

A blueprint NAME is blueprints/NAME.toml plus blueprints/NAME.checks.yaml. It is *changed* when either
file was added, modified, type-changed, copied or renamed into place between BASE and HEAD and the TOML
exists at HEAD; it is *deleted* when its TOML existed on the BASE side and is gone at HEAD (deleted or
renamed away). Only committed content counts, never the working tree.

Range semantics: always `BASE...HEAD`, i.e. the diff from merge-base(BASE, HEAD) to HEAD.
- Merge requests (BASE = target branch or CI_MERGE_REQUEST_DIFF_BASE_SHA): only what the MR changed,
  not what landed on the target branch meanwhile — also after the MR merged the target branch in.
- Pushes (BASE = CI_COMMIT_BEFORE_SHA): BASE is an ancestor of HEAD, so the merge base is BASE and this
  equals `BASE..HEAD`, including everything a pushed merge commit brought in. After a force push it
  compares with the common ancestor instead of listing files only the discarded commits touched.
A BASE that cannot be used (the all-zero SHA GitLab sends for a new branch, a revision missing from a
shallow clone, unrelated histories) raises EdgeCIError saying why and how to fix it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from edgeci.errors import EdgeCIError
from edgeci.tools import git

TOML_SUFFIX = ".toml"
CHECKS_SUFFIX = ".checks.yaml"


class ChangesError(EdgeCIError):
    """The git range cannot be evaluated (missing base, not a repository)."""


@dataclass
class ChangeSet:
    changed: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    reasons: dict[str, list[str]] = field(default_factory=dict)  # name → ["blueprints/x.toml modified", …]
    base: str = ""  # resolved SHAs ("" with all=True)
    head: str = ""
    merge_base: str = ""

    def as_dict(self) -> dict[str, object]:
        return {"changed": self.changed, "deleted": self.deleted, "reasons": self.reasons,
                "base": self.base, "head": self.head, "merge_base": self.merge_base}


_WORDS = {"A": "added", "M": "modified", "D": "deleted", "R": "renamed", "C": "copied", "T": "type changed"}


def blueprint_name(path: str, bp_dir: str) -> str | None:
    """NAME for bp_dir/NAME.toml or bp_dir/NAME.checks.yaml (directly inside bp_dir), or for any file under an
    image-mode directory bp_dir/NAME/ (its Containerfile, checks.yaml and build context); else None."""
    prefix = "" if bp_dir in ("", ".") else bp_dir.strip("/") + "/"
    if path.startswith(prefix) and "/" in path[len(prefix):]:
        return path[len(prefix):].split("/", 1)[0] or None
    parent, _, base = path.rpartition("/")
    if parent != bp_dir.strip("/") and not (parent == "" and bp_dir in ("", ".")):
        return None
    if base.endswith(CHECKS_SUFFIX):
        stem = base[: -len(CHECKS_SUFFIX)]
    elif base.endswith(TOML_SUFFIX):
        stem = base[: -len(TOML_SUFFIX)]
    else:
        return None
    return stem or None


def _repo_relative(repo: Path, blueprints_dir: str | os.PathLike[str]) -> str:
    d = Path(blueprints_dir)
    if not d.is_absolute():
        return d.as_posix().strip("/") or "."
    try:
        rel = d.resolve().relative_to(repo.resolve())
    except ValueError:
        raise ChangesError(f"blueprints directory '{d}' is outside the git repository '{repo}'",
                           fix="run edgeci from the repository that holds the blueprints") from None
    return rel.as_posix() or "."


def _repo(repo_dir: str | os.PathLike[str]) -> Path:
    top = git.toplevel(repo_dir)
    if top is None:
        raise ChangesError(f"'{repo_dir}' is not inside a git work tree",
                           fix="run edgeci in a clone of the repository (git clone …)")
    return top


def resolve_base(repo: Path, base: str) -> str:
    """BASE as a commit SHA, or ChangesError explaining why it is unusable and how to fix that."""
    if not base:
        raise ChangesError("no base revision given", fix="pass --base REV, or --all to select every blueprint")
    if set(base) == {"0"}:
        raise ChangesError(
            f"base revision '{base}' is the all-zero SHA (GitLab sends it for the first push of a new branch), "
            "so there is nothing to compare with",
            fix="pass the target branch instead (--base origin/main, after fetching it), or use --all",
        )
    sha = git.rev_parse(repo, base)
    if sha is not None:
        return sha
    if git.is_shallow(repo):
        raise ChangesError(
            f"base revision '{base}' is not in this shallow clone",
            fix="fetch more history (GitLab: set GIT_DEPTH: 0, or `git fetch --unshallow`; "
                f"or `git fetch origin {base}`), or use --all",
        )
    raise ChangesError(f"base revision '{base}' does not exist in '{repo}'",
                       fix=f"fetch it first (git fetch origin {base}) or check the name, or use --all")


def resolve_head(repo: Path, head: str) -> str:
    sha = git.rev_parse(repo, head or "HEAD")
    if sha is None:
        raise ChangesError(f"head revision '{head}' does not exist in '{repo}'",
                           fix="check the name, or omit --head to use HEAD")
    return sha


def _names_at(repo: Path, rev: str, bp_dir: str) -> set[str]:
    """Blueprint names whose TOML (or, image mode, NAME/Containerfile) exists at rev."""
    out = set()
    for path in git.ls_tree(repo, rev, bp_dir):
        if path.endswith(TOML_SUFFIX) and not path.endswith(CHECKS_SUFFIX):
            name = blueprint_name(path, bp_dir)
            if name:
                out.add(name)
        elif "." not in path.rsplit("/", 1)[-1] and f"{path}/Containerfile" in git.ls_tree(repo, rev, path):
            out.add(path.rsplit("/", 1)[-1])  # an image-mode directory, blueprints/NAME/Containerfile
    return out


def _is_containerfile(path: str, bp_dir: str) -> bool:
    prefix = "" if bp_dir in ("", ".") else bp_dir.strip("/") + "/"
    rest = path[len(prefix):] if path.startswith(prefix) else ""
    return rest.count("/") == 1 and rest.endswith("/Containerfile")


def changed(
    repo_dir: str | os.PathLike[str],
    base: str | None,
    head: str = "HEAD",
    blueprints_dir: str | os.PathLike[str] = "blueprints",
    all: bool = False,
) -> ChangeSet:
    """The blueprints that BASE...HEAD touched (see the module docstring), or every one with all=True."""
    repo = _repo(repo_dir)
    bp_dir = _repo_relative(repo, blueprints_dir)
    head_sha = resolve_head(repo, head)
    at_head = _names_at(repo, head_sha, bp_dir)
    if all:
        names = sorted(at_head)
        return ChangeSet(changed=names, deleted=[], reasons={n: ["--all"] for n in names}, head=head_sha)

    base_sha = resolve_base(repo, base or "")
    mb = git.merge_base(repo, base_sha, head_sha)
    if mb is None:
        if git.is_shallow(repo):
            raise ChangesError(
                f"no common ancestor of base '{base}' and head '{head}' in this shallow clone",
                fix="fetch more history (GitLab: GIT_DEPTH: 0, or `git fetch --unshallow`), or use --all",
            )
        raise ChangesError(f"base '{base}' and head '{head}' have no common history",
                           fix="pass a base revision on the same branch history, or use --all")

    reasons: dict[str, list[str]] = {}
    touched: set[str] = set()
    gone: set[str] = set()
    spec = "." if bp_dir == "." else bp_dir
    for e in git.diff_name_status(repo, mb, head_sha, paths=[spec]):
        word = _WORDS.get(e.status, e.status)
        new_name = blueprint_name(e.path, bp_dir)
        old_name = blueprint_name(e.old_path, bp_dir) if e.old_path else None
        if e.status == "D":
            if new_name:
                reasons.setdefault(new_name, []).append(f"{e.path} deleted")
                defining = (e.path.endswith(TOML_SUFFIX) and not e.path.endswith(CHECKS_SUFFIX)) \
                    or _is_containerfile(e.path, bp_dir)
                (gone if defining else touched).add(new_name)
            continue
        if new_name:
            what = f"{e.path} {word}" + (f" from {e.old_path}" if e.old_path else "")
            reasons.setdefault(new_name, []).append(what)
            touched.add(new_name)
        if e.status == "R" and old_name and old_name != new_name:
            reasons.setdefault(old_name, []).append(f"{e.old_path} renamed to {e.path}")
            is_toml = e.old_path is not None and not e.old_path.endswith(CHECKS_SUFFIX)
            (gone if is_toml else touched).add(old_name)

    changed_names = sorted(n for n in touched | gone if n in at_head)
    deleted_names = sorted(n for n in gone if n not in at_head)
    keep = set(changed_names) | set(deleted_names)
    return ChangeSet(
        changed=changed_names,
        deleted=deleted_names,
        reasons={n: r for n, r in sorted(reasons.items()) if n in keep},
        base=base_sha,
        head=head_sha,
        merge_base=mb,
    )
