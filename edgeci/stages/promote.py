"""`edgeci promote BLUEPRINT [--dry-run]`: glue between the build record and edgeci.promote.

Reads the candidate and the gate's decision from the record, runs the pinned promotion, prints each step,
writes reports/promote-<bp>-<arch>.xml and the record's promote section. EDGECI_TEST_PAUSE_AT=<step> or
after-<step> stops at that step boundary (the kill tests SIGKILL the process there), until the file named
by EDGECI_TEST_RESUME_FILE appears.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from edgeci.config import Config

HELP = "promote the approved candidate's exact commit to the production repo (sign, deltas, summary)"
PAUSE_ENV = "EDGECI_TEST_PAUSE_AT"
RESUME_ENV = "EDGECI_TEST_RESUME_FILE"  # with the pause: carry on once this file exists


def add_arguments(p: argparse.ArgumentParser) -> None:
    from edgeci.stages.common import add_target_args

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
        from edgeci import stage
        from edgeci.tools import skopeo

        name, _, digest = image_ref.rpartition("@")
        if name.startswith("oci:"):
            source = cfg.path(name[len("oci:"):].split(":")[0])
        elif name.startswith("oci-archive:"):
            source = cfg.path(name[len("oci-archive:"):].split(":")[0])
        else:
            access = skopeo.Access.from_config(cfg)
            source = tmp / "layout"
            skopeo.copy(image_ref if "://" in image_ref else f"docker://{image_ref}", f"oci:{source}:promote",
                        retry_times=access.retry_times, src_tls_verify=access.tls_verify, authfile=access.authfile,
                        src_creds=access.creds, attempts=access.attempts, backoff=access.backoff)
        with stage.open_image(source, digest, max_bytes=cfg.stage.max_archive_bytes) as src:
            extracted = stage.populate_from_image(src, tmp / "extract", repo_path=cfg.stage.repo_path,
                                                  max_bytes=cfg.stage.max_archive_bytes)
        return Path(extracted.repo)

    return fetch


def step_printer(prefix: str) -> Any:
    """on_step callback: one line per finished step; honours the test pause hook."""
    from edgeci.ui import say

    pause = os.environ.get(PAUSE_ENV, "")

    def on_step(step: str, phase: str, detail: str) -> None:
        if phase == "end":
            say(f"{prefix} {step}: {detail}")
        spot = step if phase == "begin" else f"after-{step}"
        if pause and pause == spot:
            print(f"edgeci-test: paused at {spot}", flush=True)
            sys.stdout.flush()
            resume = os.environ.get(RESUME_ENV, "")
            deadline = time.monotonic() + 3600
            while time.monotonic() < deadline and not (resume and os.path.exists(resume)):
                time.sleep(0.05)

    return on_step


def request(cfg: Config, rec: Any, name: str, arch: str) -> Any:
    from edgeci.gate import policy
    from edgeci.promote import PromoteRequest
    from edgeci.stages.gate import prod_ref

    s = rec.sections
    cand = policy.Candidate.from_sections(s)
    return PromoteRequest(
        ref=prod_ref(cfg, name, arch, rec),
        checksum=rec.checksum,
        version=cand.version,
        parent=cand.parent,
        stage_url=str((s.get("stage") or {}).get("url", "")),
        gate=s.get("gate") or {},
        blueprint=name,
        arch=arch,
        image_digest=str((s.get("push") or {}).get("digest", "")),
        image_ref=str((s.get("push") or {}).get("image_ref", "")),
        packages=list((s.get("compose") or {}).get("packages") or []),
        blueprint_info=s.get("blueprint") or {},
        approvals_required=cfg.gate.approvals_required,
        allow_fork=cfg.gate.allow_fork,
        windows=list(cfg.gate.windows),
        freeze=list(cfg.gate.freeze),
    )


def run(args: argparse.Namespace, cfg: Config) -> int:
    from edgeci.errors import PromotionError
    from edgeci.promote import ProdSettings, plan, promote
    from edgeci.record import FAILED
    from edgeci.report import Case, Outcome, write_junit
    from edgeci.stages.common import load_record, target
    from edgeci.ui import say

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
