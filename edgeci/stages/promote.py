"""`edgeci promote BLUEPRINT [--dry-run]`: glue between the build record and edgeci.promotion.

Reads the candidate and the gate's decision from the record, runs the pinned promotion, prints each step,
writes reports/promote-<bp>-<arch>.xml and the record's promote section. EDGECI_TEST_PAUSE_AT=<step> or
after-<step> stops at that step boundary (the kill tests SIGKILL the process there), until the file named
by EDGECI_TEST_RESUME_FILE appears.
"""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING, Any

from edgeci.config import Config

if TYPE_CHECKING:
    from edgeci.promotion import PromoteRequest
    from edgeci.record import BuildRecord

HELP = "promote the approved candidate's exact commit to the production repo (sign, deltas, summary)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from edgeci.target import add_target_args

    add_target_args(p)
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    p.add_argument("--from", dest="source", choices=("stage", "image"), default=None,
                   help="pull the commit from the stage repo, or from the pushed image by digest "
                        "(default: prod.source, stage)")


def image_fetcher(cfg: Config) -> Any:
    """(image_ref, scratch dir) -> the ostree repo inside that exact image (manifest digest and layer digests
    verified), from an oci:/oci-archive: path or a registry (skopeo copy by digest)."""
    from pathlib import Path

    def fetch(image_ref: str, tmp: Path) -> Path:
        from edgeci.image import extract_pushed, local_image_path
        from edgeci.tools import skopeo

        name, _, digest = image_ref.rpartition("@")
        access = None if local_image_path(name, cfg.path) else skopeo.Access.from_config(cfg)
        extracted = extract_pushed(name, digest, tmp / "extract", repo_path=cfg.stage.repo_path,
                                   max_bytes=cfg.stage.max_archive_bytes, resolve=cfg.path, access=access,
                                   scratch_parent=tmp)
        return Path(extracted.repo)

    return fetch


def request(cfg: Config, rec: BuildRecord, name: str, arch: str) -> PromoteRequest:
    from edgeci.promotion import PromoteRequest

    cand = rec.candidate(cfg.ref(name, arch))
    return PromoteRequest(
        ref=cand.ref,
        checksum=cand.checksum,
        version=cand.version,
        parent=cand.parent,
        stage_url=cand.stage_url,
        gate=cand.gate.as_dict() if cand.gate else {},
        blueprint=name,
        arch=arch,
        image_digest=cand.image_digest,
        image_ref=cand.image_ref,
        packages=cand.packages,
        blueprint_info=rec.get("blueprint") or {},
        approvals_required=cfg.gate.approvals_required,
        allow_fork=cfg.gate.allow_fork,
        windows=list(cfg.gate.windows),
        freeze=list(cfg.gate.freeze),
    )


def run(args: argparse.Namespace, cfg: Config) -> int:
    from edgeci.errors import PromotionError
    from edgeci.junit import Case, Outcome, write_junit
    from edgeci.production import ProdSettings
    from edgeci.promotion import plan, promote
    from edgeci.record import FAILED
    from edgeci.target import load_record, target
    from edgeci.ui import say, step_printer

    name, arch = target(cfg, args)
    rec = load_record(cfg, name, arch)
    rec.require("compose")  # a failed compose is refused by name, not as an empty checksum
    req = request(cfg, rec, name, arch)
    settings = ProdSettings.from_config(cfg)
    if args.source:
        settings.source = args.source
    if args.dry_run:
        say(f"plan for promoting {name} {arch} {req.checksum} to {settings.repo} ({req.ref}):")
        for line in plan(settings, req):
            say(f"  {line}")
        return 0
    started = time.monotonic()
    try:
        result = promote(settings, req, on_step=step_printer("promote"), fetch_image=image_fetcher(cfg))
    except PromotionError as e:
        write_junit(cfg.reports_dir, "promote", name, arch,
                    [Case("promotion", Outcome.FAILED if e.exit_code == 1 else Outcome.ERROR, e.render())])
        rec.set("promote", {"repo": str(settings.repo), "ref": req.ref, "checksum": req.checksum,
                            "error": e.render()}, status=FAILED)
        rec.save()
        raise
    cases = [Case(st.name, Outcome.PASSED, "", st.detail, st.seconds) for st in result.steps]
    write_junit(cfg.reports_dir, "promote", name, arch, cases)
    rec.set("promote", result.as_record())
    rec.save()
    verb = "already in production" if result.noop else "promoted"
    say(f"{verb}: {name} {result.version} {result.checksum} on {result.ref} in {result.repo} "
        f"({time.monotonic() - started:.1f}s)")
    return 0
