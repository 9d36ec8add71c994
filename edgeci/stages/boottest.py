"""`edgeci boot-test BLUEPRINT`: boot the staged candidate — install, upgrade from production, rollback.

Glue only: read the record (blueprint, compose, push, stage; the stage must serve compose.commit),
pick the backend (qemu when installed, else sysroot; libvirt on request), run the scenarios of
edgeci.boottest.scenarios, write reports/boot-test-<bp>-<arch>.xml and the record's boot_test section.
Exit 1 when any check failed or could not run, 0 otherwise.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from edgeci.config import Config

if TYPE_CHECKING:
    from edgeci.boottest.base import Guest
    from edgeci.boottest.scenarios import Candidate
    from edgeci.record import BuildRecord

HELP = "boot the staged candidate: install, upgrade from production, prove rollback"
BACKENDS = ("auto", "qemu", "sysroot", "libvirt")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from edgeci.stages.common import add_target_args

    add_target_args(p)
    p.add_argument("--backend", choices=BACKENDS, default=None,
                   help="qemu (a VM), sysroot (no VM: file-level checks only), libvirt (virt-install on a "
                        "KVM host); default boot_test.backend, auto = qemu when installed, else sysroot")
    p.add_argument("--scenario", action="append", choices=("install", "upgrade", "rollback"), default=None,
                   help="run only this scenario (repeatable; rollback implies the upgrade set-up)")


def choose_backend(requested: str) -> str:
    from edgeci.tools.run import have

    if requested != "auto":
        return requested
    return "qemu" if have("qemu-system-x86_64") and have("mkfs.ext4") else "sysroot"


def osname_for(distro: str) -> str:
    """The ostree stateroot a device of this distro uses (rhel-9 → rhel, fedora-40 → fedora-iot)."""
    base = distro.split("-")[0] or "rhel"
    return "fedora-iot" if base == "fedora" else base


def _require_tools(backend: str) -> None:
    from edgeci.tools.run import which

    for prog in ("ostree", "unshare"):
        if backend in ("sysroot", "qemu"):
            which(prog)
    if backend == "qemu":
        which("qemu-system-x86_64")
        which("mkfs.ext4")
    if backend == "libvirt":
        for prog in ("virt-install", "virsh", "ssh"):
            which(prog)


def candidate_from_record(cfg: Config, rec: BuildRecord, name: str, arch: str) -> Candidate:
    from edgeci.boottest.scenarios import Candidate
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
    version = str(rec.section("blueprint").get("version") or "")
    ref = str(compose.get("ref") or cfg.ref(name, arch))
    return Candidate(blueprint=name, version=version, arch=arch, ref=ref, commit=commit, stage_url=url)


def _checks_path(cfg: Config, rec: BuildRecord, name: str) -> Path:
    from edgeci.stages.common import blueprint_path

    recorded = rec.section("blueprint").get("path")
    bp = cfg.path(str(recorded)) if recorded else blueprint_path(cfg, name)
    if not bp.is_file():
        bp = blueprint_path(cfg, name)
    return bp.with_name(f"{bp.stem}.checks.yaml")


def make_factory(cfg: Config, backend: str, base_dir: Path, osname: str, candidate: Candidate,
                 record_name: str, scripts: dict[str, str]) -> Callable[[str], Guest]:
    def factory(scenario: str) -> Guest:
        wd = base_dir / scenario
        if backend == "sysroot":
            from edgeci.boottest.sysroot import SysrootGuest

            return SysrootGuest(wd, osname)
        if backend == "qemu":
            from edgeci.boottest.qemu import QemuGuest

            bt = cfg.boot_test
            return QemuGuest(wd, osname, memory_mb=bt.memory, timeout=bt.timeout, kvm=bt.kvm,
                             kvm_probe_timeout=bt.kvm_probe_timeout)
        from edgeci.boottest.libvirt import LibvirtGuest

        return LibvirtGuest(cfg.boot_test.libvirt, wd, osname=osname, vm_name=f"edgeci-{record_name}-{scenario}",
                            candidate_commit=candidate.commit, version=candidate.version,
                            boot_timeout=cfg.boot_test.timeout, scripts=scripts)

    return factory


def run(args: argparse.Namespace, cfg: Config) -> int:
    from edgeci.boottest.base import sigterm_raises
    from edgeci.boottest.scenarios import SCENARIOS, resolve_production, run_scenarios
    from edgeci.checks import ChecksFile, load_checks, render_scripts
    from edgeci.record import FAILED, PASSED
    from edgeci.report import Outcome, write_junit
    from edgeci.stages.common import load_record, target, work_dir
    from edgeci.ui import say, warn

    name, arch = target(cfg, args)
    rec = load_record(cfg, name, arch)
    candidate = candidate_from_record(cfg, rec, name, arch)
    checks_file = _checks_path(cfg, rec, name)
    parsed = load_checks(checks_file) if checks_file.is_file() else ChecksFile(None, [])
    checks = parsed.checks
    if not checks:
        warn(f"boot-test {name}/{arch}: no checks in {checks_file}: only the boot and the booted commit are verified")
    backend = choose_backend(args.backend or cfg.boot_test.backend)
    _require_tools(backend)
    production = resolve_production(cfg.path(cfg.prod.repo), cfg.prod.url, candidate.ref)
    only = tuple(args.scenario) if args.scenario else SCENARIOS
    base_dir = work_dir(cfg, name, arch) / "boot-test"
    scripts = render_scripts(parsed, candidate.version) if backend == "libvirt" else {}
    factory = make_factory(cfg, backend, base_dir, osname_for(cfg.distro(name)), candidate, f"{name}-{arch}",
                           scripts)
    say(f"boot-test {name}/{arch}: candidate {candidate.commit} ({candidate.version}) from {candidate.stage_url}, "
        f"backend {backend}; production "
        f"{production.commit or 'empty (first release)'}")
    with sigterm_raises():
        result = run_scenarios(backend, factory, candidate, production, checks,
                               progress=lambda msg: say(f"boot-test {name}/{arch}: {msg}"), only=only,
                               parallel=cfg.boot_test.parallel)
    report = write_junit(cfg.reports_dir, "boot-test", name, arch, [s.suite() for s in result.scenarios])
    section = {
        "backend": backend,
        "candidate": candidate.commit,
        "production": production.commit,
        "scenarios": {s.name: s.as_record() for s in result.scenarios},
        "delta_bytes": result.delta_bytes,
        "full_bytes": result.full_bytes,
    }
    rec.set("boot_test", section, status=PASSED if result.ok else FAILED)
    rec.save()
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
