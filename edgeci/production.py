"""Production: its settings, its state (commit and version on a ref), the releases log, the repo lock and
history — what gate, boot test, compose (parent) and promote all ask about production.
"""

from __future__ import annotations

import contextlib
import json
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeci.errors import PromotionError
from edgeci.record import atomic_write_text
from edgeci.tools import ostree

if TYPE_CHECKING:
    from edgeci.config import Config

LOCK_NAME = ".edgeci-lock"


RELEASES_NAME = "releases.json"


@dataclass
class ProdSettings:
    repo: Path
    url: str = ""
    gpg_key: str = ""
    gpg_homedir: str = ""
    ed25519_key: str = ""
    delta_from_releases: int = 3
    delta_args: list[str] = field(default_factory=list)
    retention: int = 10
    lock_timeout: float = 600.0
    fsck: str = "changed"  # changed (objects that differ from production) | full (every object of the commit)
    source: str = "stage"  # stage (pull from the stage repo URL) | image (the pushed image, by digest)

    @classmethod
    def from_config(cls, cfg: Any) -> ProdSettings:
        p = cfg.prod
        return cls(
            repo=cfg.path(p.repo),
            url=p.url,
            gpg_key=p.gpg_key,
            gpg_homedir=str(cfg.path(p.gpg_homedir)) if p.gpg_homedir else "",
            ed25519_key=str(cfg.path(p.sign_ed25519_key)) if p.sign_ed25519_key else "",
            delta_from_releases=p.delta_from_releases,
            delta_args=list(p.delta_args),
            retention=p.retention,
            lock_timeout=p.lock_timeout,
            fsck=p.fsck,
            source=p.source,
        )


@contextlib.contextmanager
def repo_lock(repo: Path, timeout: float, *, poll: float = 0.1) -> Iterator[None]:
    """Exclusive lock on REPO/.edgeci-lock: one promotion at a time."""
    from edgeci.locks import held

    repo.mkdir(parents=True, exist_ok=True)
    path = repo / LOCK_NAME

    def too_long(holder: str) -> Exception:
        return PromotionError(f"another promotion holds the production lock ({holder}) for longer than {timeout:g} s",
                              where=str(path), fix="wait for it to finish, or raise prod.lock_timeout")

    with held(path, timeout, on_timeout=too_long, poll=poll):
        yield


class ReleasesLog:
    """REPO/releases.json: every release (promotion or rollback) in order, written atomically."""

    def __init__(self, repo: Path) -> None:
        self.path = Path(repo) / RELEASES_NAME

    def load(self) -> list[dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []
        except (OSError, json.JSONDecodeError) as e:
            raise PromotionError(f"the releases log is unreadable: {e}", where=str(self.path),
                                 fix="restore it from a backup; production refs are unchanged") from None
        releases = data.get("releases") if isinstance(data, dict) else None
        if not isinstance(releases, list):
            raise PromotionError("the releases log has no 'releases' list", where=str(self.path))
        return releases

    def for_ref(self, ref: str) -> list[dict[str, Any]]:
        return [r for r in self.load() if r.get("ref") == ref]

    def last(self, ref: str) -> dict[str, Any] | None:
        entries = self.for_ref(ref)
        return entries[-1] if entries else None

    def append(self, entry: Mapping[str, Any]) -> None:
        """Append unless the ref's last release is already this checksum (a re-run after a kill)."""
        releases = self.load()
        mine = [r for r in releases if r.get("ref") == entry["ref"]]
        if mine and mine[-1].get("checksum") == entry["checksum"]:
            return
        releases.append(dict(entry))
        atomic_write_text(self.path, json.dumps({"schema": 1, "releases": releases}, indent=1) + "\n",
                          fsync=True)  # production state: survive a power loss too


def releases_from_url(url: str, timeout: float = 30) -> list[dict[str, Any]]:
    """The releases log of a production repo served over HTTP ([] when it has none yet)."""
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/{RELEASES_NAME}", timeout=timeout) as resp:
            data = json.loads(resp.read().decode())
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return []
        raise PromotionError(f"cannot read the releases log: HTTP {e.code}", where=url) from None
    except (urllib.error.URLError, OSError, json.JSONDecodeError) as e:
        raise PromotionError(f"cannot read the releases log: {e}", where=url,
                             fix="check prod.url, or run where prod.repo is on disk") from None
    releases = data.get("releases") if isinstance(data, dict) else None
    return releases if isinstance(releases, list) else []


@dataclass
class Production:
    """Production on one ref: its commit (None: nothing released yet) and release version; for a device,
    also the URL it is reached at and where the commit was read (for messages)."""

    ref: str = ""
    commit: str | None = None
    version: str | None = None
    url: str = ""
    source: str = ""

    @property
    def empty(self) -> bool:
        return self.commit is None


@dataclass
class ProductionState:
    production: Production
    releases: list[dict[str, Any]]  # of this ref, oldest first


def release_version(releases: list[dict[str, Any]], commit: str | None) -> str | None:
    """The release version edgeci published `commit` as, from the releases log (None: not an edgeci release).

    Never the commit's `version` metadata: Image Builder stamps it with the OS release (9.4), not the
    blueprint's version, so it says nothing about release order."""
    if not commit:
        return None
    return next((str(r["version"]) for r in reversed(releases)
                 if r.get("checksum") == commit and r.get("version")), None)


def signed_production(repo: Path, ref: str | None = None) -> str:
    """Why production counts as signed ('' when it does not): a summary signature, a signed commit on `ref`
    (detached metadata holds the signatures), or a release the log records as signed. Read from files only,
    so the answer needs neither ostree nor gpg."""
    if (repo / "summary.sig").is_file():
        return f"{repo / 'summary.sig'} exists"
    releases = ReleasesLog(repo).load() if (repo / RELEASES_NAME).is_file() else []
    if ref:
        head = repo / "refs" / "heads" / ref
        commit = head.read_text().strip() if head.is_file() else ""
        if ostree.is_checksum(commit) and (repo / "objects" / commit[:2] / f"{commit[2:]}.commitmeta").is_file():
            return f"production's commit {commit[:12]} on {ref} is signed"
    signed = [r for r in releases if r.get("signed")]
    if signed:
        return f"the releases log records release {signed[-1].get('version')} as signed"
    return ""


def read_production(settings: ProdSettings, ref: str) -> ProductionState:
    """Production's commit and version on `ref`: from the repo on disk (the ref, and the version from the
    releases log), else over HTTP from prod.url (ref file and releases log)."""
    repo = settings.repo
    if (repo / "config").is_file():
        commit = ostree.rev_parse(repo, ref)
        releases = ReleasesLog(repo).for_ref(ref)
        return ProductionState(Production(ref, commit, release_version(releases, commit)), releases)
    if settings.url:
        releases = [r for r in releases_from_url(settings.url) if r.get("ref") == ref]
        commit = None
        try:
            with urllib.request.urlopen(f"{settings.url.rstrip('/')}/refs/heads/{ref}", timeout=30) as resp:
                commit = resp.read().decode().strip() or None
        except urllib.error.HTTPError as e:
            if e.code != 404:
                raise PromotionError(f"cannot read production's ref {ref}: HTTP {e.code}",
                                     where=settings.url) from None
        except (urllib.error.URLError, OSError) as e:
            raise PromotionError(f"cannot read production's ref {ref}: {e}", where=settings.url) from None
        return ProductionState(Production(ref, commit, release_version(releases, commit)), releases)
    return ProductionState(Production(ref, None, None), [])


@dataclass
class HistoryEntry:
    version: str
    checksum: str
    time: str
    approvers: list[str]
    rollback_of: str | None
    current: bool
    present: bool | None  # None: unknown (read over HTTP)


def history(settings: ProdSettings, ref: str) -> list[HistoryEntry]:
    """The releases of `ref`, oldest first, with which one production serves and which are still stored."""
    local = (settings.repo / "config").is_file()
    state = read_production(settings, ref)
    out = []
    for r in state.releases:
        c = str(r.get("checksum", ""))
        out.append(HistoryEntry(
            version=str(r.get("version")), checksum=c, time=str(r.get("time", "")),
            approvers=list(r.get("approvers") or []), rollback_of=r.get("rollback_of"),
            current=c == state.production.commit,
            present=ostree.has_commit(settings.repo, c) if local else None,
        ))
    return out


def production_url(cfg: Config, blueprint: str, arch: str) -> str:
    """Where compose takes the parent from, so candidates build on top of production: prod.url, else the
    local production repo when it already has the blueprint's ref; '' for a first release."""
    from edgeci.tools import ostree

    if cfg.prod.url:
        return cfg.prod.url
    repo = cfg.path(cfg.prod.repo)
    if (repo / "config").is_file() and ostree.rev_parse(repo, cfg.ref(blueprint, arch)):
        return repo.resolve().as_uri()
    return ""
