"""`edgeci verify CHECKSUM|REF --repo PATH|URL [--policy FILE]`: check a production commit's whole chain of
evidence — git commit and blueprint → compose → boot test → approvals — without any CI.

Reads the bundle production published beside its repo (edgeci-evidence/<checksum>.json), checks every
signature against the trust policy (--policy, else the host's /etc/edgeci/trust.yaml, else the embedded
default's demo policy), every subject against the commit, and that production really holds the commit.
The change window is judged at the time the releases log gives for the release. Exit 0 when every link
holds, 1 when one does not (named, with the fix), 2 when something cannot be read.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from edgeci.config import Config

HELP = "verify a production commit's signed evidence chain (no CI needed)"
HEX64 = re.compile(r"^[0-9a-f]{64}$")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("commit", metavar="CHECKSUM|REF", help="the production commit, or a ref production serves")
    p.add_argument("--repo", metavar="PATH|URL", default=None,
                   help="the production repo (a directory or its URL; default prod.url, else prod.repo)")
    p.add_argument("--policy", metavar="FILE", default=None,
                   help="the trust policy to check against (default /etc/edgeci/trust.yaml)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def _resolve(repo: str, what: str) -> str:
    """The checksum `what` names in `repo` (a checksum is checked to be there; a ref is read)."""
    from edgeci.attest import fetch_text
    from edgeci.errors import VerificationError
    from edgeci.tools import ostree

    local = "://" not in repo
    if HEX64.match(what):
        if local:
            present = ostree.has_commit(repo, what)
        else:
            present = fetch_text(f"{repo.rstrip('/')}/objects/{what[:2]}/{what[2:]}.commit", binary=True) is not None
        if not present:
            raise VerificationError(f"production does not hold commit {what[:12]}", code="commit", where=repo,
                                    fix="check the checksum and --repo")
        return what
    checksum = ostree.rev_parse(repo, what) if local else fetch_text(f"{repo.rstrip('/')}/refs/heads/{what}")
    if not checksum:
        raise VerificationError(f"production has no ref '{what}'", code="commit", where=repo,
                                fix="give a checksum or a ref production serves")
    return checksum.strip()


def run(args: argparse.Namespace, cfg: Config) -> int:
    import json
    from datetime import datetime

    from edgeci import attest
    from edgeci.errors import ConfigError
    from edgeci.production import ReleasesLog, releases_from_url
    from edgeci.ui import say, warn

    repo = args.repo or cfg.prod.url or str(cfg.path(cfg.prod.repo))
    image_mode = "://" not in repo and (cfg.path(repo) / "releases.json").is_file() \
        and not (cfg.path(repo) / "config").is_file()
    if "://" not in repo and not image_mode and not (cfg.path(repo) / "config").is_file():
        raise ConfigError("not an ostree repository (nor an image-mode releases directory)", where=repo,
                          fix="pass --repo PATH|URL of production, or image_mode.releases_dir for an image digest")
    if "://" not in repo:
        repo = str(cfg.path(repo))
    if image_mode:  # image mode: an image digest, its releases log and published evidence (image_mode.releases_dir)
        from edgeci.errors import VerificationError
        from edgeci.imagemode.release import read_releases

        checksum = args.commit.removeprefix("sha256:")
        if not HEX64.match(checksum):
            raise ConfigError(f"'{args.commit}' is not an image digest", where="DIGEST",
                              fix="give the promoted image's sha256:<digest>")
        image_releases = [{**r, "checksum": str(r.get("digest", "")).removeprefix("sha256:"),
                           "ref": f"{r.get('tag', '')}", "time": r.get("promoted_at")}
                          for r in read_releases(Path(repo) / "releases.json")]
        if not any(r["checksum"] == checksum for r in image_releases):
            raise VerificationError(f"production never released image sha256:{checksum[:12]}", code="commit",
                                    where=repo, fix="check the digest and --repo")
    else:
        checksum = _resolve(repo, args.commit)
    if args.policy:
        from edgeci.trust import load_policy

        policies = attest.Policies([load_policy(args.policy)])
    else:
        policies = attest.load_policies(cfg, None)
    if image_mode:
        releases = image_releases
    else:
        releases = ReleasesLog(cfg.path(repo)).load() if "://" not in repo else releases_from_url(repo)
    release = next((r for r in reversed(releases) if r.get("checksum") == checksum), None)
    when: datetime | None = None
    if release and release.get("time"):
        when = datetime.fromisoformat(str(release["time"]).replace("Z", "+00:00"))
    bundle = attest.fetch_published(repo, checksum)
    first = bool(release) and not (release or {}).get("previous")
    checked = attest.verify(policies, bundle, checksum, now=when, first_release=first)
    results, passed = checked.results, checked.passed
    if args.json:
        out: dict[str, Any] = {"checksum": checksum, "repo": repo, "passed": passed,
                               "release": release, "policies": [p.source for p in policies.policies],
                               "results": [r.as_dict() for r in results],
                               "signers": attest.signers(bundle, policies)}
        say(json.dumps(out, indent=2, sort_keys=True))
    else:
        what = f"{release.get('version')} on {release.get('ref')}" if release else "(not in the releases log)"
        say(f"verify {checksum} {what} in {repo} against {policies.sources}:")
        for r in results:
            for line in r.lines():
                say(f"  {line}")
        for row in attest.signers(bundle, policies):
            say(f"  signed: {row['what']} by the {row['role']} key {row['key']} at {row['time'] or '?'}")
        if release is None:
            warn(f"{checksum[:12]} is not in production's releases log: it was not promoted by edgeci")
    failure = checked.first_failure()
    if failure is not None:
        raise failure
    say(f"verify: every link holds for {checksum}")
    return 0
