"""`edgeci rollback BLUEPRINT [--to VERSION]`: publish a NEW commit with an earlier release's tree.

Clients refuse commits older than the one they run, so production never goes back to an old commit: the
old tree is committed again on top of production with a higher version (edgeci.rollback-of=VERSION).
"""

from __future__ import annotations

import argparse

from edgeci.config import Config

HELP = "roll production back: a new commit with an earlier release's tree, signed, with deltas"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from edgeci.target import add_target_args

    add_target_args(p)
    p.add_argument("--to", dest="to_version", metavar="VERSION", default=None,
                   help="the release whose tree to publish (default: the release before the current one)")
    p.add_argument("--as", dest="by", metavar="NAME", default=None,
                   help="who rolls back, kept in the releases log (default: the author identity)")


def run(args: argparse.Namespace, cfg: Config) -> int:
    from edgeci.approvals import local_source as local
    from edgeci.production import ProdSettings
    from edgeci.promotion import rollback
    from edgeci.record import BuildRecord
    from edgeci.target import blueprint_file, record_file, ref_of, target
    from edgeci.ui import say, step_printer

    name, arch = target(cfg, args)
    path = record_file(cfg, name, arch)
    rec = BuildRecord.load(path) if path.exists() else None
    ref = ref_of(cfg, name, arch, rec)
    by = args.by or local.head_author(blueprint_file(cfg, name, rec.get("blueprint") if rec else None))
    settings = ProdSettings.from_config(cfg)
    result = rollback(settings, ref, to_version=args.to_version, by=by, blueprint=name, arch=arch,
                      on_step=step_printer("rollback"))
    say(f"rolled back: {ref} now serves {result.checksum} version {result.version} "
        f"(the tree of {result.rollback_of}, parent {result.previous})")
    return 0
