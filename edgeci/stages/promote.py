"""`edgeci promote BLUEPRINT [--dry-run] [--policy FILE]`: glue between the build record and edgeci.promotion.

The record only says which candidate (its checksum, ref, stage); whether it may go is decided from signed
evidence alone: the candidate's bundle verified against the production host's trust policy (edgeci.attest),
approvals counted from signed approval statements or read again from GitLab/Jenkins. Then the pinned
promotion runs, the bundle is published beside the production repo, each step is printed, and
reports/promote-<bp>-<arch>.xml and the record's promote section are written. EDGECI_TEST_PAUSE_AT=<step> or
after-<step> stops at that step boundary (the kill tests SIGKILL the process there), until the file named
by EDGECI_TEST_RESUME_FILE appears.
"""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING, Any

from edgeci.config import Config

if TYPE_CHECKING:
    from edgeci.attest import Policies, Verification
    from edgeci.evidence import Bundle
    from edgeci.promotion import PromoteRequest
    from edgeci.record import BuildRecord

HELP = "promote the approved candidate's exact commit to the production repo (sign, deltas, summary)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from edgeci.target import add_target_args

    add_target_args(p)
    p.add_argument("--dry-run", action="store_true", help="verify the evidence and print the plan, change nothing")
    p.add_argument("--policy", metavar="FILE", default=None,
                   help="a trust policy to satisfy as well (the host's /etc/edgeci/trust.yaml always applies "
                        "when it exists)")
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


def request(cfg: Config, rec: BuildRecord, name: str, arch: str, approvers: list[str],
            approvals_required: int) -> PromoteRequest:
    """What the transaction promotes: the record names the candidate; its decision is what the verified evidence
    proved (the approvers counted from signed statements or read again from their source)."""
    from edgeci.promotion import PromoteRequest

    cand = rec.candidate(cfg.ref(name, arch))
    return PromoteRequest(
        ref=cand.ref,
        checksum=cand.checksum,
        version=cand.version,
        parent=cand.parent,
        stage_url=cand.stage_url,
        gate={"checksum": cand.checksum, "decision": "approved", "status": "passed",
              "approvals": [{"user": u, "checksum": cand.checksum} for u in approvers]},
        blueprint=name,
        arch=arch,
        image_digest=cand.image_digest,
        image_ref=cand.image_ref,
        packages=cand.packages,
        blueprint_info=rec.get("blueprint") or {},
        approvals_required=approvals_required,
        allow_fork=cfg.gate.allow_fork,
        windows=list(cfg.gate.windows),
        freeze=list(cfg.gate.freeze),
    )


def verify_evidence(cfg: Config, args: argparse.Namespace, rec: BuildRecord, name: str,
                    arch: str) -> tuple[Policies, Bundle, Verification]:
    """The candidate's chain checked against the trust policies; VerificationError (exit 1) naming the first
    broken link."""
    from edgeci import attest
    from edgeci.production import ProdSettings, read_production
    from edgeci.trust import project_settings
    from edgeci.ui import say, warn

    policies = attest.load_policies(cfg, getattr(args, "policy", None))
    if policies.demo:
        say(f"promote {name}/{arch}: the embedded default's demo trust policy ({policies.sources})")
    cand = rec.candidate(cfg.ref(name, arch))
    bundle = attest.load_candidate_bundle(rec)
    external: list[Any] = []
    if cfg.gate.source != "local":  # approvals are read again from their source, never taken from the record
        from edgeci.approvals import SourceContext, gather
        from edgeci.target import blueprint_file, work_dir

        ctx = SourceContext(cfg, work_dir(cfg, name, arch), blueprint_file(cfg, name, rec.get("blueprint")),
                            options={"approver": None})
        external = [a for a in gather(cfg.gate.source, ctx, cand).approvals if a.status != "rejected"]
    from edgeci.imagemode import stages as _image

    if _image.is_image_record(rec):
        first = _image.production(cfg, name).production.commit is None
    else:
        first = read_production(ProdSettings.from_config(cfg), cand.ref).production.commit is None
    checked = attest.verify(policies, bundle, cand.checksum, project=project_settings(cfg),
                            external_approvals=external, first_release=first)
    for line in checked.differences:
        warn(f"promote {name}/{arch}: {line}")
    for r in checked.results:
        for line in r.lines():
            say(f"promote {name}/{arch}: evidence {line}")
    failure = checked.first_failure()
    if failure is not None:
        raise failure
    return policies, bundle, checked


def run(args: argparse.Namespace, cfg: Config) -> int:
    from edgeci import attest
    from edgeci.errors import ConfigError, EdgeCIError
    from edgeci.junit import Case, Outcome, write_junit
    from edgeci.production import ProdSettings
    from edgeci.promotion import plan, promote
    from edgeci.record import FAILED
    from edgeci.target import load_record, target
    from edgeci.ui import say, step_printer

    name, arch = target(cfg, args)
    rec = load_record(cfg, name, arch)
    rec.require("compose")  # a failed compose is refused by name, not as an empty checksum
    from edgeci.imagemode import stages as _image

    if _image.is_image_record(rec):  # image mode: the tested digest, stage -> production with its signatures
        return _image.promote(args, cfg, name, arch, rec)
    ref, checksum = rec.ref(cfg.ref(name, arch)), rec.checksum
    settings = ProdSettings.from_config(cfg)
    if args.source:
        settings.source = args.source

    def failed(e: EdgeCIError, case: str) -> None:
        write_junit(cfg.reports_dir, "promote", name, arch,
                    [Case(case, Outcome.FAILED if e.exit_code == 1 else Outcome.ERROR, e.render())])
        rec.set("promote", {"repo": str(settings.repo), "ref": ref, "checksum": checksum,
                            "error": e.render()}, status=FAILED)
        rec.save()

    try:
        policies, bundle, checked = verify_evidence(cfg, args, rec, name, arch)
        key, home = attest.production_key(policies)
        if key:
            settings.gpg_key, settings.gpg_homedir = key, home
        if checked.signing_required and not settings.gpg_key:
            raise ConfigError("the trust policy requires a signed production, but no production GPG key is set",
                              where=policies.sources,
                              fix="set production.gpg_key (and gpg_homedir) in the trust policy")
    except EdgeCIError as e:
        failed(e, "evidence")
        raise
    # The gate step of the transaction sees what the evidence proved, not what the record says.
    approvers = [a.approver for a in checked.results[0].approvals]
    req = request(cfg, rec, name, arch, approvers, checked.approvals_required)
    if args.dry_run:
        say(f"plan for promoting {name} {arch} {req.checksum} to {settings.repo} ({req.ref}):")
        for line in plan(settings, req):
            say(f"  {line}")
        return 0
    started = time.monotonic()
    try:
        result = promote(settings, req, on_step=step_printer("promote"), fetch_image=image_fetcher(cfg),
                         publish=lambda repo: f"published {attest.publish(repo, bundle)}")
        published = attest.published_path(settings.repo, bundle.checksum)
        if not published.is_file():  # promoted earlier without its evidence (a no-op now): publish it
            attest.publish(settings.repo, bundle)
    except EdgeCIError as e:
        failed(e, "promotion")
        raise
    cases = [Case(st.name, Outcome.PASSED, "", st.detail, st.seconds) for st in result.steps]
    cases.append(Case("evidence", Outcome.PASSED, "", "\n".join(line for r in checked.results for line in r.lines())))
    write_junit(cfg.reports_dir, "promote", name, arch, cases)
    section = result.as_record()
    section["evidence"] = {"published": str(published), "approvers": approvers,
                           "policies": [p.source for p in policies.policies]}
    rec.set("promote", section)
    rec.save()
    verb = "already in production" if result.noop else "promoted"
    say(f"{verb}: {name} {result.version} {result.checksum} on {result.ref} in {result.repo} "
        f"({time.monotonic() - started:.1f}s); evidence {published}")
    return 0
