"""`edgeci changed --base REV [--head REV] [--all] [--json]`: the blueprints a push or MR touched.

For CI fan-out. Plain output: one changed blueprint name per line, then a `deleted:` line and the
deleted names (only when there are some). --json: {"changed": [...], "deleted": [...], "reasons": {...}}.
Range semantics (BASE...HEAD) and missing-base handling: see edgeci.changes.
"""

from __future__ import annotations

import argparse
import json

from edgeci.config import Config

HELP = "list the blueprints changed between two git revisions (for CI fan-out)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", metavar="REV", default=None,
                   help="base revision: the MR target (CI_MERGE_REQUEST_DIFF_BASE_SHA) or the previous tip "
                        "of the pushed branch (CI_COMMIT_BEFORE_SHA); required unless --all")
    p.add_argument("--head", metavar="REV", default="HEAD", help="head revision (default: HEAD)")
    p.add_argument("--all", action="store_true", help="every blueprint at HEAD (scheduled rebuilds)")
    p.add_argument("--json", action="store_true", help="print JSON: changed, deleted, reasons")
    p.add_argument("--repo", metavar="DIR", default=None,
                   help="git work tree (default: the one holding the blueprints directory)")


def run(args: argparse.Namespace, cfg: Config) -> int:
    from pathlib import Path

    from edgeci.changes import changed
    from edgeci.errors import ConfigError
    from edgeci.ui import say

    if not args.all and not args.base:
        raise ConfigError("edgeci changed needs --base REV (or --all)",
                          fix="e.g. --base \"$CI_COMMIT_BEFORE_SHA\" on push, --base origin/main for a merge request")
    bp_dir = cfg.blueprints_dir
    repo = Path(args.repo) if args.repo else (bp_dir if bp_dir.is_dir() else cfg.root)
    cs = changed(repo, args.base, args.head or "HEAD", bp_dir, all=args.all)
    if args.json:
        say(json.dumps({"changed": cs.changed, "deleted": cs.deleted, "reasons": cs.reasons}, indent=2))
        return 0
    for name in cs.changed:
        say(name)
    if cs.deleted:
        say("deleted:")
        for name in cs.deleted:
            say(name)
    return 0
