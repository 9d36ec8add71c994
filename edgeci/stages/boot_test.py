"""`edgeci boot-test BLUEPRINT`: boot the staged candidate — install, upgrade from production, rollback.

Glue only: read the record (blueprint, compose, push, stage; the stage must serve compose.commit),
pick the backend (qemu when installed, else sysroot; libvirt on request), run the scenarios of
edgeci.boottest.scenarios, write reports/boot-test-<bp>-<arch>.xml and the record's boot_test section.
Exit 1 when any check failed or could not run, 0 otherwise.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from edgeci.config import Config
from edgeci.target import invalidates

if TYPE_CHECKING:
    from edgeci.production import Production
    from edgeci.record import BuildRecord, Candidate

HELP = "boot the staged candidate: install, upgrade from production, prove rollback"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from edgeci.target import add_target_args

    add_target_args(p)
    from edgeci.boottest import BACKENDS

    p.add_argument("--backend", choices=("auto", *BACKENDS), default=None,
                   help="device (the device OS in qemu: its own disk, GRUB, SSH), qemu (the busybox test OS in a "
                        "VM), sysroot (no VM: file-level checks only), libvirt (virt-install on a KVM host); default "
                        "boot_test.backend, auto = device for the local device OS, else qemu when installed, "
                        "else sysroot")
    p.add_argument("--scenario", action="append", choices=("install", "upgrade", "rollback"), default=None,
                   help="run only this scenario (repeatable; rollback implies the upgrade set-up)")


def candidate_from_record(cfg: Config, rec: BuildRecord, name: str, arch: str) -> Candidate:
    from edgeci.errors import RecordError, StageMismatch

    compose = rec.section("compose")
    rec.require("blueprint", "compose", *(() if compose.get("type") == "edge-commit" else ("push",)), "stage")
    stage = rec.section("stage")
    commit = rec.checksum
    url = str(stage.get("url") or "")
    if not url:
        raise RecordError("the stage section has no url", where=f"{rec.path}: stage.url",
                          fix="run 'edgeci stage serve' (or 'stage wait') first")
    if stage.get("commit") != commit:
        raise StageMismatch(f"the stage serves {stage.get('commit') or 'no commit'}, but the candidate is {commit}",
                            where=f"{rec.path}: stage.commit", fix="re-run 'edgeci stage' for this compose")
    return rec.candidate(cfg.ref(name, arch))


def _checks_path(cfg: Config, rec: BuildRecord, name: str) -> Path:
    from edgeci.target import blueprint_path

    recorded_checks = (rec.get("blueprint") or {}).get("checks_path")
    if recorded_checks and (rec.get("blueprint") or {}).get("kind") == "image":
        return cfg.path(str(recorded_checks))
    recorded = rec.section("blueprint").get("path")
    bp = cfg.path(str(recorded)) if recorded else blueprint_path(cfg, name)
    if not bp.is_file():
        bp = blueprint_path(cfg, name)
    return bp.with_name(f"{bp.stem}.checks.yaml")


@invalidates("boot_test")
def run(args: argparse.Namespace, cfg: Config) -> int:
    from edgeci.attest import sign_boot_test, signing_key
    from edgeci.boottest import choose_backend, guest_factory, osname_for, require_tools
    from edgeci.boottest.guest import sigterm_raises
    from edgeci.boottest.scenarios import SCENARIOS, resolve_production, run_scenarios
    from edgeci.checks import ChecksFile, load_checks, render_scripts
    from edgeci.evidence import env_var
    from edgeci.junit import Outcome, write_junit
    from edgeci.oci import sha256_file
    from edgeci.record import FAILED, PASSED
    from edgeci.target import load_record, target, work_dir
    from edgeci.templates import declared
    from edgeci.tools.run import register_secret
    from edgeci.ui import say, warn

    name, arch = target(cfg, args)
    rec = load_record(cfg, name, arch)
    candidate = candidate_from_record(cfg, rec, name, arch)
    key = signing_key("boot-test", cfg)  # a key variable naming a bad file fails now, not after the boots
    checks_file = _checks_path(cfg, rec, name)
    recorded = str((rec.get("blueprint") or {}).get("checks_sha256") or "") or None
    if checks_file.is_file() or recorded:
        # exactly the checks file compose recorded (its sha256), with the template values CI gives this job
        values = {n: os.environ[n] for n in declared(cfg, name) if n in os.environ}
        for value in values.values():
            register_secret(value)
        parsed = load_checks(checks_file, values=values, expected_sha256=recorded)
    else:
        parsed = ChecksFile(None, [])
    checks = parsed.checks
    if not checks:
        warn(f"boot-test {name}/{arch}: no checks in {checks_file}: only the boot and the booted commit are verified")
    from edgeci.imagemode import stages as _image

    image = _image.is_image_record(rec)
    only = tuple(args.scenario) if args.scenario else SCENARIOS
    base_dir = work_dir(cfg, name, arch) / "boot-test"
    if image:
        # image mode: on sysroot, edgeci's stand-in for bootc drives a sysroot device (edgeci.imagemode.device);
        # on libvirt, a RHEL 10 image-mode VM updates itself with its own bootc (the checks as greenboot scripts)
        backend = _image.boot_backend(cfg, args.backend or cfg.boot_test.backend)
        require_tools(backend)
        if backend == "sysroot":
            from edgeci.imagemode.device import BootcStandInGuest
            from edgeci.tools.run import which

            for prog in BootcStandInGuest.TOOLS:
                which(prog)
        production = _image.production(cfg, name).production
        scripts = render_scripts(parsed, candidate.version or "") if backend == "libvirt" else {}
        factory = _image.device_factory(cfg, name, base_dir, osname_for(cfg.distro(name)), backend=backend,
                                        candidate=candidate, record_name=f"{name}-{arch}", scripts=scripts)
        say(f"boot-test {name}/{arch}: the device is updated by {_image.device_description(backend)}")
    else:
        backend = choose_backend(args.backend or cfg.boot_test.backend,
                                 composed_os=str(rec.section("compose").get("os") or ""))
        require_tools(backend)
        production = resolve_production(cfg.path(cfg.prod.repo), cfg.prod.url, candidate.ref)
        # the devices reached over SSH get the checks as scripts (the busybox qemu OS reports its own)
        scripts = render_scripts(parsed, candidate.version or "") if backend in ("libvirt", "device") else {}
        factory = guest_factory(cfg, backend, base_dir, osname_for(cfg.distro(name)), candidate, f"{name}-{arch}",
                               scripts)
    say(f"boot-test {name}/{arch}: candidate {candidate.checksum} ({candidate.version}) from {candidate.stage_url}, "
        f"backend {backend}; production "
        f"{production.commit or 'empty (first release)'}")
    older = [] if image else _older_releases(cfg, production, candidate)
    if older:
        say(f"boot-test {name}/{arch}: upgrade matrix: also from " + ", ".join(str(r.version) for r in older))
    with sigterm_raises():
        result = run_scenarios(backend, factory, candidate, production, checks,
                               progress=lambda msg: say(f"boot-test {name}/{arch}: {msg}"), only=only,
                               parallel=cfg.boot_test.parallel, older=older)
    report = write_junit(cfg.reports_dir, "boot-test", name, arch, [s.suite() for s in result.scenarios])
    section = {
        "backend": backend,
        "candidate": candidate.checksum,
        "production": production.commit,
        "scenarios": {s.name: s.as_record() for s in result.scenarios},
        "delta_bytes": result.delta_bytes,
        "full_bytes": result.full_bytes,
    }
    if image:
        section["device"] = _image.device_description(backend)
    rec.set("boot_test", section, status=PASSED if result.ok else FAILED)
    rec.save()
    if key is not None:
        # the hash the checks file was verified against before the boots, not the file read again
        checks_sha = recorded or (sha256_file(checks_file) if checks_file.is_file() else "")
        bundle = sign_boot_test(rec, cfg.ref(name, arch), checks_sha256=checks_sha, key=key)
        say(f"boot-test {name}/{arch}: signed the result with the boot-test key {key.public.label} -> {bundle}")
    else:
        warn(f"boot-test {name}/{arch}: {env_var('boot-test')} is not set: the result is not signed, and "
             "production will not accept this candidate")
    for s in result.scenarios:
        say(f"boot-test {name}/{arch}: {s.name}: {s.outcome.value}" + (f" — {s.reason}" if s.reason else ""))
        for c in s.cases:
            if c.outcome in (Outcome.FAILED, Outcome.ERROR):
                say(f"  {c.outcome.value.upper()} {c.name}: {c.message}")
                for line in (c.output or "").strip().splitlines()[-5:]:
                    say(f"    | {line}")
    if result.full_bytes is not None or result.delta_bytes is not None:
        say(f"boot-test {name}/{arch}: bytes fetched: install {result.full_bytes}, upgrade {result.delta_bytes}")
    say(f"boot-test {name}/{arch}: report {report}")
    if not result.ok:
        bad = [f"{s.name}/{c.name}" for s in result.scenarios for c in s.cases
               if c.outcome in (Outcome.FAILED, Outcome.ERROR)]
        say(f"boot-test {name}/{arch}: FAILED ({', '.join(bad[:6])}{' …' if len(bad) > 6 else ''})")
        return 1
    say(f"boot-test {name}/{arch}: passed")
    return 0


def _older_releases(cfg: Config, production: Production, candidate: Candidate) -> list[Production]:
    """Releases before production's current one to upgrade from too (boot_test.upgrade_from counts production's
    current release as the first), read from production's releases log."""
    from edgeci.boottest.scenarios import older_releases
    from edgeci.production import ReleasesLog, releases_from_url

    count = cfg.boot_test.upgrade_from - 1
    if count < 1 or production.empty:
        return []
    local = cfg.path(cfg.prod.repo)
    if (local / "config").is_file():
        releases = ReleasesLog(local).for_ref(candidate.ref)
    else:
        releases = [r for r in releases_from_url(production.url) if r.get("ref") == candidate.ref]
    return older_releases(releases, production, candidate.checksum, count)

