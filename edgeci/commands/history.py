"""`edgeci history BLUEPRINT`: the releases of the blueprint's production ref, from the releases log."""

from __future__ import annotations

import argparse
import json

from edgeci.config import Config

HELP = "list the production releases of a blueprint (version, checksum, approvers, rollbacks)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from edgeci.target import add_target_args

    add_target_args(p)
    p.add_argument("--json", action="store_true", help="print the entries as JSON")


def run(args: argparse.Namespace, cfg: Config) -> int:
    from dataclasses import asdict

    from edgeci.production import ProdSettings, history
    from edgeci.record import BuildRecord
    from edgeci.target import record_file, ref_of, target
    from edgeci.ui import say

    name, arch = target(cfg, args)
    path = record_file(cfg, name, arch)
    rec = BuildRecord.load(path) if path.exists() else None
    ref = ref_of(cfg, name, arch, rec)
    entries = history(ProdSettings.from_config(cfg), ref)
    if args.json:
        say(json.dumps([asdict(e) for e in entries], indent=2))
        return 0
    if not entries:
        say(f"no releases on {ref} yet")
        return 0
    say(f"releases of {name} on {ref} (oldest first):")
    for e in entries:
        flags = []
        if e.current:
            flags.append("current")
        if e.rollback_of:
            flags.append(f"rollback of {e.rollback_of}")
        if e.present is False:
            flags.append("pruned")
        who = ", ".join(e.approvers) or "-"
        say(f"  {e.version:<12} {e.checksum[:12]}  {e.time:<20}  approved by {who}"
            + (f"  [{'; '.join(flags)}]" if flags else ""))
    return 0
