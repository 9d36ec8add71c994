"""`edgeci approve BLUEPRINT --as NAME`: a local approval bound to the candidate's commit checksum.

The approval is a file under build/<bp>/<arch>/approvals/<checksum>/; `edgeci gate` counts it only for
that checksum and never when NAME is one of the change's authors. With EDGECI_APPROVER_KEY set it is also
signed (an in-toto approval statement in the candidate's evidence bundle): production counts only those.
"""

from __future__ import annotations

import argparse
import os

from edgeci.config import Config

HELP = "approve the candidate's exact commit checksum for production (local approvals)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from edgeci.target import add_target_args

    add_target_args(p)
    p.add_argument("--as", dest="approver", metavar="NAME", default=None,
                   help="who approves (default $EDGECI_APPROVER)")
    p.add_argument("--comment", default="", help="why (kept with the approval)")
    p.add_argument("--checksum", default=None,
                   help="the checksum you reviewed; refused when the record's candidate is another one")


def run(args: argparse.Namespace, cfg: Config) -> int:
    from edgeci import policy
    from edgeci.approvals import local_source as local
    from edgeci.attest import sign_approval, signing_key
    from edgeci.errors import GateError
    from edgeci.evidence import env_var
    from edgeci.target import blueprint_file, load_record, target, work_dir
    from edgeci.ui import say, warn

    name, arch = target(cfg, args)
    approver = (args.approver or os.environ.get("EDGECI_APPROVER", "")).strip()
    if not approver:
        raise GateError("who approves is not given", fix="pass --as NAME (or set EDGECI_APPROVER)")
    rec = load_record(cfg, name, arch)
    checksum = rec.checksum
    if args.checksum and not policy.names_checksum(args.checksum, checksum):
        raise GateError(f"you reviewed {args.checksum}, but the candidate of {name} {arch} is now {checksum}",
                        where=str(rec.path), fix="review the new candidate (edgeci gate) and approve its checksum")
    key = signing_key("approver", cfg)
    work = work_dir(cfg, name, arch)
    path = local.write_approval(work, checksum, approver, comment=args.comment)
    if key is not None:
        bundle = sign_approval(rec, cfg.ref(name, arch), approver=approver, comment=args.comment, key=key,
                               source_ref=str(path))
        say(f"signed {approver}'s approval with the approver key {key.public.label} -> {bundle}")
    else:
        warn(f"{env_var('approver')} is not set: this approval is not signed, and production counts only signed "
             "approvals (or approvals it reads again from GitLab or Jenkins)")
    evidence = local.collect(work, blueprint_file(cfg, name, rec.get("blueprint")))
    me = policy.Approval(approver, checksum)
    who = policy.author_of(me, evidence.people)
    if who is not None:
        warn(f"{approver} is the {who.label()}: the gate will not count this approval")
    mine = sorted({a.user for a in evidence.approvals if a.checksum == checksum})
    version = (rec.get("blueprint") or {}).get("version", "?")
    say(f"{approver} approved {checksum} ({name} {version} {arch})")
    say(f"approvals of this checksum: {', '.join(mine)} ({len(mine)} of {cfg.gate.approvals_required} required)")
    say(f"stored in {path}")
    return 0
