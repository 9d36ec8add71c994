"""`edgeci run [BLUEPRINT...]`: the whole pipeline, lint → compose → push → stage → boot-test → gate → promote.

Each stage runs as its own command (the same code path as in CI, one stage never calling another);
this command only sequences them, prints one line per stage with elapsed time, and stops at the
first stage that does not pass. At a pending gate it says exactly how to approve and resume.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from typing import TYPE_CHECKING

from edgeci.config import Config

if TYPE_CHECKING:
    from edgeci.record import BuildRecord

HELP = "run the whole pipeline for blueprints (default: all), stopping at the gate until approved"

# (stage, record section it writes)
STAGES = [
    ("lint", "lint"),
    ("compose", "compose"),
    ("push", "push"),
    ("stage", "stage"),
    ("boot-test", "boot_test"),
    ("gate", "gate"),
    ("promote", "promote"),
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("blueprints", nargs="*", metavar="BLUEPRINT", help="blueprint names (default: all)")
    p.add_argument("--arch", default=None, help="only this architecture")
    p.add_argument("--resume", action="store_true",
                   help="continue each blueprint from its first stage that has not passed (after an approval)")
    p.add_argument("--rebuild", action="store_true",
                   help="scheduled rebuild on top of production: an unchanged blueprint is composed as "
                        "production's next patch version")
    p.add_argument("--until", choices=[s for s, _ in STAGES], default=None,
                   help="stop after this stage (e.g. boot-test for merge-request pipelines)")


def _first_pending(record: BuildRecord | None) -> int:
    """Index of the first stage whose record section is missing or failed."""
    from edgeci.record import PASSED

    if record is None:
        return 0
    for i, (_, section) in enumerate(STAGES):
        sec = record.get(section)
        if sec is None or sec.get("status") != PASSED:
            return i
        if section == "gate" and sec.get("decision") != "approved":
            return i
    return len(STAGES)


def _argv(stage: str, cfg: Config, name: str, arch: str, config_args: list[str], rebuild: bool,
          served_prod: str = "") -> list[str]:
    extra = ["--rebuild"] if rebuild else []
    if stage == "lint":
        from edgeci.target import blueprint_path

        return [*config_args, "lint", str(blueprint_path(cfg, name)), *extra]
    if stage == "compose":
        argv = [*config_args, "compose", name, "--arch", arch, *extra]
        from edgeci.production import production_url

        url = production_url(cfg, name, arch)
        url = served_prod if url and served_prod else url  # the same repo, over HTTP
        return [*argv, "--url", url] if url else argv
    if stage == "stage":
        from edgeci.target import is_image

        mode = "serve" if is_image(cfg, name) and cfg.stage.mode == "serve" else cfg.stage.mode
        return [*config_args, "stage", mode, name, "--arch", arch]
    return [*config_args, stage, name, "--arch", arch]


def _stage_server_running(record: BuildRecord | None) -> bool:
    from edgeci.reposerver import server_info

    sec = record.get("stage") if record else None
    return bool(sec and sec.get("dir") and server_info(str(sec["dir"])) is not None)


def _demo_trust(cfg: Config) -> None:
    """The embedded default signs its evidence too: demo keys and a demo trust policy under build/trust, made
    once and said so. A host with its own trust policy, or a production elsewhere, gets nothing here."""
    import os

    from edgeci import attest
    from edgeci.boottest import choose_backend
    from edgeci.ui import say

    if not attest.is_demo_production(cfg) or os.path.isfile(attest.SYSTEM_POLICY):
        return
    backend = choose_backend(cfg.boot_test.backend, cfg)
    backends = ["device", "qemu", "libvirt"] if backend in ("device", "qemu", "libvirt") else [backend]
    fresh = not (attest.demo_dir(cfg) / "trust.yaml").is_file()
    policy = attest.ensure_demo_trust(cfg, backends=backends)
    if fresh:
        say(f"demo signing keys and trust policy for this machine's production: {policy} (compose, boot-test "
            "and approvals are signed with them; a real production host keeps its own policy, docs/trust.md)")
    if backends == ["sysroot"]:
        say("note: qemu is not installed, so the demo policy accepts the sysroot boot test, which boots nothing")


def run(args: argparse.Namespace, cfg: Config) -> int:
    from edgeci.errors import BlueprintError
    from edgeci.reposerver import RepoServer
    from edgeci.target import blueprint_names
    from edgeci.ui import say

    names = args.blueprints or blueprint_names(cfg)
    if not names:
        raise BlueprintError("no blueprints to run", where=str(cfg.blueprints_dir),
                             fix="add blueprints/NAME.toml or name the blueprints to build")
    cfg_file = cfg.source != "(embedded default)"
    config_args = ["--config", cfg.source] if cfg_file else []
    for pair in getattr(args, "set", None) or []:
        config_args += ["--set", pair]
    _demo_trust(cfg)
    prod_repo = cfg.path(cfg.prod.repo)
    if cfg.prod.url or not (prod_repo / "config").is_file():
        return _run_all(args, cfg, names, config_args, "")
    # The embedded default: production is a directory here. Serve it on 127.0.0.1 for this run, so that
    # compose takes its parent and the boot test's devices upgrade over HTTP, as they would from the real one.
    with RepoServer(prod_repo) as server:
        say(f"production repo {prod_repo} served at {server.url} for this run (pid {server.pid})")
        return _run_all(args, cfg, names, config_args, server.url)


def _run_all(args: argparse.Namespace, cfg: Config, names: list[str], config_args: list[str],
             served_prod: str) -> int:
    """Every blueprint × arch through the stages; `served_prod` is production's URL when this run serves it."""
    from edgeci.cli import main
    from edgeci.record import BuildRecord
    from edgeci.target import record_file
    from edgeci.ui import say
    last = [s for s, _ in STAGES].index(args.until) if args.until else len(STAGES) - 1
    worst = 0
    started = time.monotonic()
    for name in names:
        for arch in ([args.arch] if args.arch else cfg.arches(name)):
            path = record_file(cfg, name, arch)
            record = BuildRecord.load(path) if args.resume and path.exists() else None
            first = _first_pending(record) if args.resume else 0
            if args.resume and first == len(STAGES):
                say(f"{name}/{arch}: already promoted ({record.section('promote').get('version') if record else ''})")
                continue
            # promotion pulls from the stage: make sure it still serves when resuming past it
            from edgeci.target import is_image

            serves = cfg.stage.mode == "serve" and not is_image(cfg, name)  # an image's stage is a registry tag
            if args.resume and first > 3 and serves and not _stage_server_running(record):
                say(f"{name}/{arch}: the stage server is not running; serving the stage again")
                first = 3
            code, i = 0, first
            for i in range(first, last + 1):
                stage, _ = STAGES[i]
                t0 = time.monotonic()
                say(f"==> {stage} {name}/{arch}")
                reads_prod = served_prod and stage in ("compose", "boot-test")
                extra = ["--set", f"prod.url={served_prod}"] if reads_prod else []
                code = main(_argv(stage, cfg, name, arch, [*config_args, *extra], args.rebuild, served_prod))
                took = time.monotonic() - t0
                verdict = "passed" if code == 0 else ("failed" if code == 1 else "error")
                if stage == "gate" and code == 1:
                    verdict = "not approved"
                say(f"<== {stage} {name}/{arch}: {verdict} ({took:.1f}s, {time.monotonic() - started:.1f}s total)")
                if code != 0:
                    break
            if code == 0 and last == len(STAGES) - 1 and cfg.stage.mode == "serve":
                main([*config_args, "stage", "stop", name, "--arch", arch])
            elif code == 1 and i < len(STAGES) and STAGES[i][0] == "gate":
                cfg_file = cfg.source != "(embedded default)"
                plain = " ".join(["edgeci", *(["--config", shlex.quote(cfg.source)] if cfg_file else [])])
                full = " ".join(["edgeci", *map(shlex.quote, config_args)])
                say(f"{name}/{arch} is waiting for approval. Approve the tested commit as someone other "
                    f"than its author, then resume:")
                say(f"    {plain} approve {name} --arch {arch} --as NAME")
                say(f"    {full} run {name} --arch {arch} --resume      (or: {full} promote {name} --arch {arch})")
            worst = max(worst, code)
    sys.stdout.flush()
    return worst
