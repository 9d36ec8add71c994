"""Image mode (bootc) behind the stages: the glue each stage runs for a blueprints/NAME/Containerfile image.

Not a stage of its own (edgeci/stages/ holds exactly the seven stages): lint, compose, push, stage, boot_test, gate
and promote call these when the blueprint
(or the record's compose.kind) is an image. The domain is edgeci.imagemode (source, containerfile_rules, build,
sign, release, device). The candidate's "checksum" is the hex of its image digest everywhere the ostree kind
has the commit checksum: the record, the gate's approvals, the signed evidence (subject = the image).
"""

from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeci.config import Config
from edgeci.errors import ConfigError, RecordError

if TYPE_CHECKING:
    from edgeci.imagemode.containerfile_rules import LintSettings
    from edgeci.imagemode.device import DeviceTrust
    from edgeci.imagemode.sign import Endpoint, Signer
    from edgeci.production import ProductionState
    from edgeci.record import BuildRecord, Candidate

KIND = "image"


def is_image_record(rec: BuildRecord) -> bool:
    return (rec.get("compose") or {}).get("kind") == KIND


def lint_settings(cfg: Config) -> LintSettings:
    from edgeci.imagemode.containerfile_rules import LintSettings

    return LintSettings(allowed_tags=tuple(cfg.image_mode.allowed_base_tags), hadolint=cfg.image_mode.hadolint)


# -- where images go ---------------------------------------------------------------------------------------

def candidate_repo(cfg: Config, name: str) -> str:
    """HOST/REPO candidates are pushed to: registry.image, which must be docker:// for image mode."""
    from edgeci.registry import destination

    dest = destination(cfg, name)
    if dest.kind != "docker":
        raise ConfigError(f"image mode pushes to a registry, but registry.image is {cfg.registry.image}",
                          where="registry.image", fix="set registry.image: docker://HOST[:PORT]/REPO/{blueprint}")
    return dest.base.removeprefix("docker://")


def prod_repo(cfg: Config, name: str) -> str:
    """HOST/REPO of production images: image_mode.registry, else registry.image's host with prod/NAME."""
    raw = cfg.image_mode.registry
    if not raw:
        return f"{candidate_repo(cfg, name).split('/', 1)[0]}/prod/{name}"
    try:
        value = raw.format(blueprint=name)
    except (KeyError, IndexError, ValueError):
        raise ConfigError(f"image_mode.registry '{raw}' has an unknown placeholder", where="image_mode.registry",
                          fix="only {blueprint} is substituted") from None
    if not value.startswith("docker://") or "/" not in value[len("docker://"):]:
        raise ConfigError(f"image_mode.registry '{value}' is not docker://HOST/REPO", where="image_mode.registry")
    return value.removeprefix("docker://").rstrip("/")


def prod_ref(cfg: Config, name: str) -> str:
    """What devices follow, HOST/REPO:TAG: the image-mode candidate's "ref"."""
    return f"{prod_repo(cfg, name)}:{cfg.image_mode.prod_tag}"


def endpoint(cfg: Config) -> Endpoint:
    from edgeci.imagemode.sign import Endpoint
    from edgeci.tools.skopeo import Access

    access = Access.from_config(cfg)
    return Endpoint(tls_verify=access.tls_verify, creds=access.creds, authfile=access.authfile)


def lookaside(cfg: Config) -> tuple[Path, str]:
    """(the directory CI writes GPG signatures to, the URL devices read them from)."""
    d = cfg.path(cfg.image_mode.lookaside)
    return d, cfg.image_mode.lookaside_url or d.resolve().as_uri()


def ci_registries_d(cfg: Config, name: str) -> Path:
    """build/imagemode/registries.d: where this job's skopeo writes and reads signatures of both repositories."""
    from edgeci.imagemode import sign

    d, url = lookaside(cfg)  # skopeo creates the directory when it writes the first signature
    use_sigstore = cfg.image_mode.signing == "sigstore"
    entry = sign.registries_d_entry(lookaside=url, lookaside_staging=None if use_sigstore else d.resolve().as_uri(),
                                    use_sigstore_attachments=use_sigstore)
    rd = cfg.build_dir / "imagemode" / "registries.d"
    sign.write_registries_d(rd, {candidate_repo(cfg, name): entry, prod_repo(cfg, name): entry})
    return rd


def signer(cfg: Config) -> Signer | None:
    from edgeci.imagemode import sign

    im = cfg.image_mode
    if im.signing == "none":
        return None
    if im.signing == "gpg":
        if not im.gpg_key:
            raise ConfigError("image_mode.signing is gpg but image_mode.gpg_key is empty", where="image_mode.gpg_key",
                              fix="set the signing key's fingerprint (and gpg_homedir), or signing: sigstore")
        home = cfg.path(im.gpg_homedir) if im.gpg_homedir else Path.home() / ".gnupg"
        return sign.GpgSigner(im.gpg_key, home)
    if not im.sigstore_key:
        raise ConfigError("image_mode.signing is sigstore but image_mode.sigstore_key is empty",
                          where="image_mode.sigstore_key", fix="set the cosign-format private key file")
    return sign.SigstoreSigner(cfg.path(im.sigstore_key),
                               cfg.path(im.sigstore_passphrase_file) if im.sigstore_passphrase_file else None)


def device_trust(cfg: Config, name: str) -> DeviceTrust:
    """What a device enforces: candidates from the candidate repository and production images (signatures made
    for the candidate repository, remapped), signed by the site's key."""
    from edgeci.imagemode.device import DeviceTrust
    from edgeci.tools import gpg

    im = cfg.image_mode
    cand, prod = candidate_repo(cfg, name), prod_repo(cfg, name)
    if im.signing == "none":
        raise ConfigError("image_mode.signing is none: a device policy would accept nothing",
                          where="image_mode.signing", fix="sign images (gpg or sigstore)")
    if im.signing == "gpg":
        if im.gpg_public_key:
            key = cfg.path(im.gpg_public_key).read_text()
        else:
            s = signer(cfg)
            assert s is not None and hasattr(s, "homedir")
            key = gpg.export_public(s.homedir, im.gpg_key)
    else:
        if not im.sigstore_public_key:
            raise ConfigError("image_mode.sigstore_public_key is empty", where="image_mode.sigstore_public_key",
                              fix="set the public half of image_mode.sigstore_key")
        key = cfg.path(im.sigstore_public_key).read_text()
    _, url = lookaside(cfg)
    return DeviceTrust({cand: None, prod: cand}, key, url if im.signing == "gpg" else "", im.signing)


def releases_dir(cfg: Config, name: str) -> Path:
    return cfg.path(cfg.image_mode.releases_dir, blueprint=name)


def production(cfg: Config, name: str) -> ProductionState:
    """Production's image: the digest the production tag points at (hex, as a "commit") and its version from
    the releases log; the log's entries carry "checksum" (hex) like the ostree kind's."""
    from edgeci.imagemode.release import current_digest, read_releases
    from edgeci.production import Production, ProductionState

    ref = prod_ref(cfg, name)
    digest = current_digest(f"docker://{ref}", endpoint(cfg))
    releases = [{**r, "checksum": str(r.get("digest", "")).removeprefix("sha256:")}
                for r in read_releases(releases_dir(cfg, name) / "releases.json")]
    hexd = digest.removeprefix("sha256:") if digest else None
    version = next((str(r["version"]) for r in reversed(releases) if r.get("checksum") == hexd), None)
    return ProductionState(Production(ref, hexd, version, url=f"docker://{prod_repo(cfg, name)}",
                                      source=f"docker://{ref}"), releases)


# -- lint ----------------------------------------------------------------------------------------------------

def lint_image(cfg: Config, containerfile: Path) -> tuple[str, list[Any]]:
    """(name, findings) of one image: the Containerfile's rules and its checks.yaml (strict)."""
    from edgeci.blueprint import Finding
    from edgeci.checks import ChecksError, load_checks
    from edgeci.imagemode.containerfile_rules import lint_containerfile
    from edgeci.imagemode.source import CHECKS

    findings = lint_containerfile(containerfile, lint_settings(cfg))
    checks = containerfile.with_name(CHECKS)
    if checks.is_file():
        try:
            load_checks(checks)
        except ChecksError as e:
            findings.append(Finding("checks", "error", e.where or f"{checks}:1", e.message))
    return containerfile.parent.name, findings


def write_lint_outputs(cfg: Config, containerfile: Path, name: str, findings: list[Any], display: str) -> None:
    """reports/lint-NAME-ARCH.xml and the record's blueprint + lint sections (kind image)."""
    from edgeci.checks import file_sha256
    from edgeci.errors import BlueprintError
    from edgeci.imagemode.containerfile_rules import BOOTC_CONTAINER_LINT
    from edgeci.imagemode.source import CHECKS, load, version_of
    from edgeci.junit import Case, Outcome, write_junit
    from edgeci.record import FAILED, PASSED, BuildRecord, record_path
    from edgeci.tools import git

    errors = [f for f in findings if f.severity == "error"]
    rules = sorted({f.rule for f in findings} | {"base-unpinned", "version-label", "bootc-labels"})
    cases = []
    for rule in rules:
        mine = [f for f in findings if f.rule == rule]
        bad = [f for f in mine if f.severity == "error"]
        out = "\n".join(f.line() for f in mine)
        cases.append(Case(rule, Outcome.FAILED, f"{bad[0].where}: {bad[0].message}", out) if bad
                     else Case(rule, Outcome.PASSED, "", out or "passed"))
    cases.append(Case(BOOTC_CONTAINER_LINT, Outcome.SKIPPED, "runs at build, inside the built image, when it "
                                                              "carries /usr/bin/bootc"))
    try:
        v = version_of(load(containerfile))
    except BlueprintError:  # an unparseable file is already an error finding
        v = None
    checks = containerfile.with_name(CHECKS)
    sha = hashlib.sha256(containerfile.read_bytes()).hexdigest()
    blueprint = {"name": name, "version": v[0] if v else "", "path": display, "kind": KIND,
                 "git_sha": git.head_sha(containerfile.resolve()), "sha256": sha,
                 "checks_path": str(Path(display).with_name(CHECKS)) if checks.is_file() else "",
                 "checks_sha256": file_sha256(checks) if checks.is_file() else ""}
    lint = {"findings": [f.as_dict() for f in findings]}
    for arch in cfg.arches(name):
        write_junit(cfg.reports_dir, "lint", name, arch, cases)
        rec = BuildRecord.load_or_new(record_path(cfg.build_dir, name, arch))
        old_bp, old_lint = rec.get("blueprint"), rec.get("lint")
        if (old_bp and old_lint and all(old_bp.get(k) == val for k, val in blueprint.items())
                and old_lint.get("findings") == lint["findings"]):
            continue
        rec.set("blueprint", blueprint)
        rec.set("lint", lint, status=FAILED if errors else PASSED)
        rec.save()


# -- compose = build -----------------------------------------------------------------------------------------

def compose(args: argparse.Namespace, cfg: Config, name: str, arch: str) -> int:
    from edgeci.attest import compose_evidence, signing_key
    from edgeci.errors import BlueprintError
    from edgeci.evidence import env_var
    from edgeci.imagemode import build, localbase
    from edgeci.imagemode.source import find
    from edgeci.junit import Case, Outcome, write_junit
    from edgeci.record import FAILED, BuildRecord
    from edgeci.stages.compose import _committed, _display
    from edgeci.target import check_location, record_file
    from edgeci.tools import git
    from edgeci.ui import error, say, warn

    src = find(cfg.blueprints_dir, name)
    check_location(src.containerfile, cfg.root)
    _, findings = lint_image(cfg, src.containerfile)
    errors = [f for f in findings if f.severity == "error"]
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise BlueprintError(f"image fails lint: {errors[0].message}{more}", where=errors[0].where,
                             fix=f"run edgeci lint {src.containerfile}")
    files = [p for p in sorted(src.directory.rglob("*")) if p.is_file()]
    uncommitted = _committed(cfg, files, getattr(args, "allow_uncommitted", False))
    dest = cfg.build_dir / name / arch
    dest.mkdir(parents=True, exist_ok=True)
    rec = BuildRecord.load_or_new(record_file(cfg, name, arch))
    display = _display(cfg, src.containerfile)
    write_lint_outputs(cfg, src.containerfile, name, findings, display)
    rec = BuildRecord.load(record_file(cfg, name, arch))
    build_args = dict(cfg.image_mode.build_args)
    base = cfg.image_mode.base
    state = production(cfg, name)  # what this candidate updates from (the parent)
    archive = dest / f"{name}.oci.tar"
    say(f"compose {name}/{arch}: building {display} with buildah (vfs, chroot isolation)"
        + (f"; base {base}" if base else ""))
    started = time.monotonic()
    with build.private_storage(cfg.build_dir) as storage:
        if base == "local":
            base_archive = localbase.ensure_local_base(cfg.build_dir / "imagemode")
            build.import_base(storage, base_archive, localbase.LOCAL_BASE_NAME)
            build_args.setdefault("BASE", localbase.LOCAL_BASE_NAME)
        elif base:
            build_args.setdefault("BASE", base)
        try:
            img = build.build_image(src.containerfile, archive, storage=storage, name=name, context=src.context,
                                    build_args=build_args, pull="never" if base == "local" else "missing",
                                    tls_verify=cfg.registry.tls_verify)
        except build.ImageBuildFailed as e:
            rec.set("compose", {"kind": KIND, "backend": "buildah", "artifact": "", "commit": "", "step": e.step,
                                "log": _display(cfg, archive.with_name(archive.name + ".build.log")),
                                "error": e.render()}, status=FAILED)
            rec.save()
            write_junit(cfg.reports_dir, "compose", name, arch,
                        [Case("build", Outcome.FAILED, e.render(), e.log[-20000:], time.monotonic() - started)])
            error(e.render())
            return 1
    version = img.version or str((rec.get("blueprint") or {}).get("version") or "")
    section = {**img.as_dict(), "artifact": _display(cfg, img.archive), "log": _display(cfg, img.log),
               "backend": "buildah", "id": img.config_digest, "type": "bootc-image",
               "ref": prod_ref(cfg, name), "commit": img.digest.removeprefix("sha256:"),
               "parent": state.production.commit or "", "version": version, "build_args": build_args,
               "uncommitted": uncommitted, "git_sha": git.head_sha(src.containerfile.resolve())}
    rec.set("compose", section)
    rec.save()
    key = signing_key("compose", cfg)
    if key is None:
        warn(f"compose {name}/{arch}: {env_var('compose')} is not set: no signed provenance, and production will "
             "not accept this candidate")
    else:
        bundle = compose_evidence(cfg, rec, name, arch, blueprint_file=src.containerfile,
                                  checks_file=src.checks_path, key=key)
        say(f"compose {name}/{arch}: signed the provenance with the compose key {key.public.label} -> {bundle}")
    out = [f"image {img.digest}", f"base {img.base_name or '?'} {img.base_digest or '?'}",
           f"archive {section['artifact']} sha256 {img.archive_sha256}", f"size {img.size} B in {len(img.layers)} "
           "layers", *(f"layer {layer.digest} {layer.size} B" for layer in img.layers),
           f"packages {len(img.packages)} ({img.package_db or 'no package database'})", f"bootc container lint: "
           f"{img.bootc_lint}", f"build {img.duration:.2f} s"]
    write_junit(cfg.reports_dir, "compose", name, arch, [Case("build", Outcome.PASSED, "", "\n".join(out),
                                                               img.duration)])
    say(f"compose {name}/{arch}: image {img.digest} ({version}), {img.size} B in {len(img.layers)} layers, "
        f"base {img.base_digest or '?'}, {len(img.packages)} packages, built in {img.duration:.2f} s")
    say(f"compose {name}/{arch}: bootc container lint {img.bootc_lint}")
    return 0


# -- push ------------------------------------------------------------------------------------------------------

def push(cfg: Config, name: str, arch: str, rec: BuildRecord) -> int:
    from edgeci.imagemode.build import update_bytes
    from edgeci.junit import Case, Outcome, write_junit
    from edgeci.oci import sha256_file
    from edgeci.registry import tags_for
    from edgeci.ui import say

    compose = rec.section("compose")
    archive = cfg.path(str(compose.get("artifact") or ""))
    if not archive.is_file() or sha256_file(archive) != compose.get("artifact_sha256"):
        raise RecordError("the built image archive is missing or changed since compose", where=str(archive),
                          fix="run 'edgeci compose' again")
    repo = candidate_repo(cfg, name)
    version = str(compose.get("version") or "")
    tags = tags_for(cfg, name, version or "latest", arch)
    digest = str(compose["digest"])
    say(f"push {name}/{arch}: {archive.name} -> docker://{repo} by digest {digest} (tags {', '.join(tags)}), "
        f"signed: {cfg.image_mode.signing}")
    t0 = time.monotonic()
    from edgeci.imagemode.sign import push_signed
    from edgeci.imagemode.signing_key import push_signer

    # the configured key signs; EDGECI_IMAGE_SIGNING_KEY (the CI push job's secret file) only brings its material
    with push_signer(signer(cfg)) as chosen:
        pushed = push_signed(archive, repo, tags, expected_digest=digest, layers=compose.get("layers") or [],
                             signer=chosen, registries_d=ci_registries_d(cfg, name), endpoint=endpoint(cfg))
    seconds = time.monotonic() - t0
    state = production(cfg, name)
    prod_layers = _production_layers(cfg, name, state)
    from edgeci.imagemode.build import Layer

    new_layers = [Layer(str(x["digest"]), int(x["size"]), str(x.get("media_type", ""))) for x in
                  compose.get("layers") or []]
    update = update_bytes(prod_layers, new_layers) if prod_layers is not None else None
    rec.set("push", {"destination": f"docker://{repo}", "tags": tags, "digest": pushed.digest,
                     "image_ref": f"docker://{repo}@{pushed.digest}", "refs": pushed.refs,
                     "image_bytes": pushed.image_bytes, "update_bytes": update,
                     "signed": cfg.image_mode.signing, "seconds_push": round(seconds, 3)})
    rec.save()
    cases = [Case("push", Outcome.PASSED, "", "\n".join(pushed.refs), seconds)]
    write_junit(cfg.reports_dir, "push", name, arch, cases)
    say(f"push {name}/{arch}: docker://{repo}@{pushed.digest}; {pushed.image_bytes} B of layers"
        + (f"; a device on production downloads {update} B for it" if update is not None else ""))
    return 0


def _production_layers(cfg: Config, name: str, state: ProductionState) -> list[dict[str, Any]] | None:
    """The production image's layers (digest, size) from the registry, or None when there is none."""
    from edgeci.tools import skopeo

    if not state.production.commit:
        return None
    ep = endpoint(cfg)
    ref = f"docker://{prod_repo(cfg, name)}@sha256:{state.production.commit}"
    manifest = skopeo.inspect(ref, raw=True, tls_verify=ep.tls_verify, authfile=ep.authfile, creds=ep.creds)
    return [{"digest": str(x["digest"]), "size": int(x.get("size", 0))} for x in manifest.get("layers") or []]


# -- stage -----------------------------------------------------------------------------------------------------

def stage(cfg: Config, name: str, arch: str, rec: BuildRecord, mode: str, deadline: float | None = None) -> int:
    """serve: move the stage tag of the candidate repository to the candidate digest; wait: poll until the
    registry serves that digest under the stage tag (someone else moves it). Either way the registry must
    answer the stage tag with exactly the candidate's digest."""
    from edgeci.errors import StageMismatch
    from edgeci.imagemode.release import current_digest
    from edgeci.imagemode.sign import copy
    from edgeci.junit import Case, Outcome, write_junit
    from edgeci.ui import say

    rec.require("blueprint", "compose", "push")
    push_sec = rec.section("push")
    digest = str(push_sec["digest"])
    repo = candidate_repo(cfg, name)
    tag_ref = f"docker://{repo}:{cfg.image_mode.stage_tag}"
    ep = endpoint(cfg)
    t0 = time.monotonic()
    if mode == "serve":
        copy(f"docker://{repo}@{digest}", tag_ref, registries_d=ci_registries_d(cfg, name), src_endpoint=ep,
             dest_endpoint=ep, preserve_digests=True)
        served = current_digest(tag_ref, ep)
    else:
        limit = cfg.stage.wait_deadline if deadline is None else deadline
        say(f"stage {name}/{arch}: waiting up to {limit:g} s for {tag_ref} to serve {digest}")
        end = time.monotonic() + limit
        while True:
            served = current_digest(tag_ref, ep)
            if served == digest or time.monotonic() >= end:
                break
            time.sleep(max(0.1, cfg.stage.wait_interval))
    if served != digest:
        e = StageMismatch(f"{tag_ref} serves {served or 'nothing'}, not the candidate {digest}", where=tag_ref,
                          fix="move the stage tag to the candidate digest (edgeci stage serve), or wait longer")
        write_junit(cfg.reports_dir, "stage", name, arch, [Case("served digest", Outcome.FAILED, e.render())])
        raise e
    rec.set("stage", {"url": f"docker://{repo}", "commit": digest.removeprefix("sha256:"), "mode": f"tag-{mode}",
                      "dir": "", "pid": None, "tag": cfg.image_mode.stage_tag, "digest": digest})
    rec.save()
    write_junit(cfg.reports_dir, "stage", name, arch,
                [Case("served digest", Outcome.PASSED, "", f"{tag_ref} = {served}", time.monotonic() - t0)])
    say(f"stage {name}/{arch}: {tag_ref} serves {served}")
    return 0


# -- boot test -------------------------------------------------------------------------------------------------

BOOTC_ON_VM = ("bootc on the libvirt VM (RHEL 10 image mode: Anaconda's ostreecontainer pinned by digest, bootc switch "
               "--transport registry REPO@sha256:DIGEST, bootc status --format=json, greenboot's fallback)")


def boot_backend(cfg: Config, requested: str) -> str:
    """The image kind's device: sysroot here (edgeci's stand-in for bootc deploys into it; auto is sysroot), or
    libvirt on a KVM host (a RHEL 10 image-mode VM whose real bootc updates it)."""
    if requested in ("auto", "sysroot"):
        return "sysroot"
    if requested == "libvirt":
        return "libvirt"
    raise ConfigError(f"image-mode boot tests run on the sysroot or libvirt backend, not '{requested}'",
                      where="boot_test.backend",
                      fix="use --backend sysroot (edgeci's stand-in for bootc) or --backend libvirt (real bootc on a "
                          "KVM host)")


def device_description(backend: str) -> str:
    """What updated the device, for the record's boot_test.device and the report."""
    from edgeci.imagemode.device import STANDIN

    return STANDIN if backend == "sysroot" else BOOTC_ON_VM


def device_factory(cfg: Config, name: str, base_dir: Path, osname: str, *, backend: str = "sysroot",
                   candidate: Candidate | None = None, record_name: str = "",
                   scripts: dict[str, str] | None = None) -> Any:
    """scenario -> a fresh image-mode device: on sysroot, a sysroot device updated by edgeci's stand-in for bootc
    (with the site's trust policy); on libvirt, a RHEL 10 VM with real bootc (tooling Bootc), the candidate being
    its image digest and the checks run as rendered greenboot scripts over SSH."""
    if backend == "libvirt":
        from edgeci.boottest.libvirt_guest import LibvirtGuest
        from edgeci.boottest.ssh_device import Bootc

        if candidate is None:
            raise ValueError("the libvirt backend needs the candidate")
        cand = candidate

        def vm(scenario: str) -> LibvirtGuest:
            return LibvirtGuest(cfg.boot_test.libvirt, base_dir / scenario, osname=osname,
                                vm_name=f"edgeci-{record_name or name}-{scenario}",
                                candidate_commit=cand.checksum.removeprefix("sha256:"),
                                version=cand.version or "", boot_timeout=cfg.boot_test.timeout,
                                scripts=scripts or {}, tooling=Bootc())

        return vm
    if backend != "sysroot":
        boot_backend(cfg, backend)  # refuses it
    from edgeci.boottest.sysroot_guest import SysrootGuest
    from edgeci.imagemode.device import BootcStandInGuest, DeviceSettings

    settings = DeviceSettings(device_trust(cfg, name), endpoint=endpoint(cfg), image_name=name)

    def factory(scenario: str) -> BootcStandInGuest:
        return BootcStandInGuest(SysrootGuest(base_dir / scenario, osname), settings)

    return factory


# -- promote ---------------------------------------------------------------------------------------------------

def promote(args: argparse.Namespace, cfg: Config, name: str, arch: str, rec: BuildRecord) -> int:
    """Verify the evidence first, then copy the tested digest stage -> production with its signatures, the
    production tag last, the releases log, the evidence published beside it."""
    from datetime import UTC, datetime

    from edgeci import attest, policy
    from edgeci.errors import EdgeCIError, PromotionRefused
    from edgeci.imagemode.release import promote as release_promote
    from edgeci.junit import Case, Outcome, write_junit
    from edgeci.record import FAILED
    from edgeci.stages.promote import verify_evidence
    from edgeci.ui import say

    cand = rec.candidate(prod_ref(cfg, name))
    digest = f"sha256:{cand.checksum}"
    rdir = releases_dir(cfg, name)
    prod = prod_repo(cfg, name)
    t0 = time.monotonic()

    def failed(e: EdgeCIError, case: str) -> None:
        write_junit(cfg.reports_dir, "promote", name, arch,
                    [Case(case, Outcome.FAILED if e.exit_code == 1 else Outcome.ERROR, e.render())])
        rec.set("promote", {"repo": f"docker://{prod}", "ref": cand.ref, "checksum": cand.checksum,
                            "error": e.render()}, status=FAILED)
        rec.save()

    try:
        policies, bundle, checked = verify_evidence(cfg, args, rec, name, arch)
        if checked.signing_required and cfg.image_mode.signing == "none":
            raise ConfigError("the trust policy requires signed production, but image_mode.signing is none",
                              where=policies.sources, fix="sign images (image_mode.signing: gpg or sigstore)")
        gate = rec.section("gate")
        if gate.get("checksum") and gate.get("checksum") != cand.checksum:
            raise PromotionRefused(f"the gate decided on {gate.get('checksum')}, the candidate is {cand.checksum}",
                                   where=str(rec.path), fix="run the gate again")
        now = datetime.now(UTC)
        for rule in (policy.check_window(cfg.gate.windows, now), policy.check_freeze(cfg.gate.freeze, now)):
            if rule.outcome != policy.PASSED:
                raise PromotionRefused(f"{rule.name}: {rule.reason}", where="gate", fix="promote inside a window")
    except EdgeCIError as e:
        failed(e, "evidence")
        raise
    approvers = [a.approver for a in checked.results[0].approvals]
    seen = gate.get("production_digest")
    expected = f"sha256:{seen}" if seen else None
    if args.dry_run:
        say(f"plan: copy docker://{candidate_repo(cfg, name)}@{digest} -> docker://{prod}:{cand.version} with its "
            f"signatures, then move docker://{prod}:{cfg.image_mode.prod_tag} (now {expected or 'no tag'})")
        return 0
    bp = rec.get("blueprint") or {}
    compose = rec.section("compose")
    try:
        published = attest.publish(rdir, bundle)  # before the tag moves, like the ostree kind
        result = release_promote(
            digest=digest, version=str(cand.version), stage_repo=candidate_repo(cfg, name), prod_repo=prod,
            prod_tag=cfg.image_mode.prod_tag, expected_previous=expected, releases_log=rdir / "releases.json",
            registries_d=ci_registries_d(cfg, name), stage_endpoint=endpoint(cfg), prod_endpoint=endpoint(cfg),
            extra={"approvers": approvers, "blueprint_path": bp.get("path"), "blueprint_git_sha": bp.get("git_sha"),
                   "blueprint_sha256": bp.get("sha256"), "packages": compose.get("packages") or [],
                   "layers": compose.get("layers") or [], "evidence": str(published)})
    except EdgeCIError as e:
        failed(e, "promotion")
        raise
    seconds = time.monotonic() - t0
    write_junit(cfg.reports_dir, "promote", name, arch, [
        Case("evidence", Outcome.PASSED, "", "\n".join(line for r in checked.results for line in r.lines())),
        Case("promotion", Outcome.PASSED, "", "\n".join(result.refs), seconds)])
    rec.set("promote", {"repo": f"docker://{prod}", "ref": cand.ref, "checksum": cand.checksum, "digest": digest,
                        "previous": result.previous, "version": result.version, "refs": result.refs,
                        "signed": cfg.image_mode.signing != "none", "deltas": [],
                        "releases": str(rdir / "releases.json"),
                        "evidence": {"published": str(published), "approvers": approvers,
                                     "policies": [p.source for p in policies.policies]}})
    rec.save()
    say(f"promoted: {name} {result.version} {digest} to docker://{prod}:{result.version}, "
        f"then {cfg.image_mode.prod_tag} (was {result.previous or 'no tag'}) ({seconds:.1f}s); evidence {published}")
    return 0
