"""`edgeci record show BLUEPRINT`: print the build record (JSON, or a summary)."""

from __future__ import annotations

import argparse
import json

from edgeci.config import Config

HELP = "show the build record of a blueprint"


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    show = sub.add_parser("show", help="print the record")
    show.add_argument("blueprint", metavar="BLUEPRINT")
    show.add_argument("--arch", default=None)
    show.add_argument("--json", action="store_true", help="the whole record as JSON")
    show.add_argument("--section", default=None, help="only this section (as JSON)")


def run(args: argparse.Namespace, cfg: Config) -> int:
    from edgeci.target import load_record, target
    from edgeci.ui import say

    name, arch = target(cfg, args)
    rec = load_record(cfg, name, arch)
    if args.section:
        say(json.dumps(rec.section(args.section), indent=2, sort_keys=True))
        return 0
    if args.json:
        say(rec.to_json())
        return 0
    say(f"record {rec.path}")
    from edgeci.record import SECTIONS

    for sec_name in sorted(rec.sections, key=lambda n: SECTIONS.index(n) if n in SECTIONS else len(SECTIONS)):
        sec = rec.sections[sec_name]
        detail = ""
        for key in ("version", "commit", "digest", "url", "decision", "checksum"):
            if key in sec:
                detail = f" {key}={sec[key]}"
                break
        say(f"  {sec_name:<10} {sec.get('status', '?'):<7} {sec.get('time', '')}{detail}")
    return 0
