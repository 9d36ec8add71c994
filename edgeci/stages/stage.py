"""`edgeci stage serve|stop|wait|units BLUEPRINT`: the stage repository the boot test and production pull from.

serve: extract the ostree repo from the pushed image (by digest) or the compose archive into
stage.dir and serve it on 127.0.0.1 in the background; stop: stop that server by PID; wait: poll a
stage host running the edge-container (podman auto-update) until it serves the record's commit;
units: write the stage host's podman run line, systemd unit and auto-update set-up.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeci.config import Config
from edgeci.target import invalidates

if TYPE_CHECKING:
    from edgeci.image import Extracted
    from edgeci.junit import Case
    from edgeci.record import BuildRecord

HELP = "serve, stop, wait for, or set up the stage repository"


def _target_args(p: argparse.ArgumentParser) -> None:
    """BLUEPRINT/--arch, plus edgeci's global options (argparse does not pass them to nested sub-commands)."""
    from edgeci.target import add_target_args

    add_target_args(p)
    p.add_argument("--config", "-c", metavar="FILE", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    serve = sub.add_parser("serve", help="extract the repo from the image and serve it on 127.0.0.1 (background)")
    _target_args(serve)
    serve.add_argument("--source", choices=("auto", "image", "archive"), default="auto",
                       help="image: the pushed image by digest; archive: the compose artifact; "
                            "auto (default): the image when pushed, else the archive")
    serve.add_argument("--port", type=int, default=None, help="port to listen on (default stage.port; 0 = any)")
    stop = sub.add_parser("stop", help="stop the stage server started by 'stage serve'")
    _target_args(stop)
    wait = sub.add_parser("wait", help="wait until stage.url serves the record's commit")
    _target_args(wait)
    wait.add_argument("--url", default=None, help="stage repo URL (default stage.url)")
    wait.add_argument("--deadline", type=float, default=None, help="seconds (default stage.wait_deadline)")
    units = sub.add_parser("units", help="write the stage host's podman/systemd set-up")
    _target_args(units)
    units.add_argument("--output", "-o", default=None, metavar="DIR",
                       help="directory for the files (default build/<blueprint>/<arch>/stage-host)")


def stage_dir(cfg: Config, name: str, arch: str) -> Path:
    return cfg.path(cfg.stage.dir, blueprint=name, arch=arch)


class Steps:
    """JUnit cases for the steps of one run: begin() a step, end() it; fail() marks the open one."""

    def __init__(self) -> None:
        self.cases: list[Case] = []
        self._open: tuple[Case, float] | None = None

    def begin(self, name: str) -> None:
        from edgeci.junit import Case

        self._open = (Case(name), time.monotonic())
        self.cases.append(self._open[0])

    def end(self, output: str = "") -> None:
        if self._open:
            case, started = self._open
            case.seconds, case.output = time.monotonic() - started, output
            self._open = None

    def fail(self, error: Exception) -> None:
        from edgeci.errors import EdgeCIError
        from edgeci.junit import Outcome

        if self._open:
            case, started = self._open
            case.seconds = time.monotonic() - started
            case.outcome = Outcome.FAILED if getattr(error, "exit_code", 2) == 1 else Outcome.ERROR
            case.message = str(error) if isinstance(error, EdgeCIError) else f"{type(error).__name__}: {error}"
            self._open = None


def _source(cfg: Config, rec: BuildRecord, choice: str) -> tuple[str, dict[str, Any]]:
    """('image'|'archive'|'commit', details) — where the stage repo comes from."""
    from edgeci.errors import RecordError

    compose = rec.section("compose")
    kind = compose.get("type") or "edge-container"
    push = rec.get("push")
    if kind == "edge-commit":
        if choice == "image":
            raise RecordError("an edge-commit has no image to stage from", where=f"{rec.path}: compose.type",
                              fix="use --source archive (the default for edge-commit)")
        return "commit", compose
    if kind != "edge-container":
        raise RecordError(f"a {kind} compose holds no ostree repo to stage", where=f"{rec.path}: compose.type",
                          fix="stage the edge-container (or edge-commit) the installer is built from")
    if choice == "image" or (choice == "auto" and push is not None):
        rec.require("push")
        return "image", rec.section("push")
    return "archive", compose


@invalidates("stage")
def serve(args: argparse.Namespace, cfg: Config) -> int:
    from edgeci.reposerver import serve_lock
    from edgeci.target import load_record, target
    from edgeci.ui import say

    name, arch = target(cfg, args)
    rec = load_record(cfg, name, arch)
    rec.require("blueprint", "compose")
    from edgeci.imagemode import stages as _image

    if _image.is_image_record(rec):  # image mode: the stage is a tag in the registry
        return _image.stage(cfg, name, arch, rec, "serve")
    sdir = stage_dir(cfg, name, arch)

    def waiting(holder: str) -> None:
        say(f"stage {name}/{arch}: another 'edgeci stage serve' of {sdir} is running ({holder}); waiting for it, "
            "then this one replaces its server")

    # One serve per stage directory at a time: three at once would start three servers and track one.
    with serve_lock(sdir, on_wait=waiting):
        return _serve_locked(args, cfg, name, arch, load_record(cfg, name, arch), sdir)


def _serve_locked(args: argparse.Namespace, cfg: Config, name: str, arch: str, rec: BuildRecord, sdir: Path) -> int:
    from edgeci.errors import EdgeCIError, StageMismatch
    from edgeci.image import check_repo_commit, populate_from_tar
    from edgeci.junit import write_junit
    from edgeci.reposerver import RepoServer, stop_server
    from edgeci.stagehost import fetch_ref
    from edgeci.ui import say

    rec.require("blueprint", "compose")
    compose = rec.section("compose")
    commit = rec.checksum
    ref = rec.ref(cfg.ref(name, arch))
    kind, details = _source(cfg, rec, args.source)
    steps = Steps()
    server: RepoServer | None = None
    try:
        stopped = stop_server(sdir) if sdir.is_dir() else None
        if stopped:
            say(f"stage {name}/{arch}: stopped the previous stage server (pid {stopped})")
        if kind == "commit":
            steps.begin("extract")
            extracted = populate_from_tar(cfg.path(str(compose.get("artifact") or "")), sdir, repo_path="repo",
                                          max_bytes=cfg.stage.max_archive_bytes,
                                          sha256=compose.get("artifact_sha256"))
            steps.end(f"{extracted.entries} entries, {extracted.bytes} bytes -> {extracted.repo}")
        else:
            extracted = _extract_image(cfg, kind, details, compose, sdir, steps)
        say(f"stage {name}/{arch}: extracted {extracted.entries} entries ({extracted.bytes} bytes) "
            f"into {extracted.repo}")
        steps.begin("commit in image")
        check_repo_commit(extracted.repo, ref, commit)
        steps.end(f"{ref} -> {commit}")
        steps.begin("delta from production")
        steps.end(_delta_from_production(cfg, extracted.repo, ref, commit))
        steps.begin("serve")
        port = cfg.stage.port if args.port is None else args.port
        server = RepoServer(extracted.repo, host=cfg.stage.host, port=port, state_dir=sdir).start()
        steps.end(f"{server.url} pid {server.pid}")
        steps.begin("served commit")
        served = fetch_ref(server.url, ref)
        if served != commit:
            raise StageMismatch(f"the stage serves {served or 'no commit'}, expected {commit}",
                                where=f"{server.url}/refs/heads/{ref}")
        steps.end(f"{server.url}/refs/heads/{ref} = {served}")
    except BaseException as e:
        if server is not None:
            server.stop()
        if isinstance(e, EdgeCIError):
            steps.fail(e)
            write_junit(cfg.reports_dir, "stage", name, arch, steps.cases)
        raise
    pid, url = server.pid, server.url
    rec.set("stage", {"url": url, "commit": commit, "mode": "serve", "dir": str(sdir), "pid": pid})
    rec.save()
    server.detach()
    report = write_junit(cfg.reports_dir, "stage", name, arch, steps.cases)
    say(f"stage {name}/{arch}: serving {commit} at {url} (pid {pid}); "
        f"stop it with 'edgeci stage stop {name}'")
    say(f"stage {name}/{arch}: report {report}")
    return 0


def _delta_from_production(cfg: Config, repo: Path, ref: str, commit: str) -> str:
    """A static delta from production's commit to the candidate in the stage repo, so the upgrading device fetches
    what it will fetch from production after the promotion (promote generates the same delta there)."""
    from edgeci.boottest.scenarios import resolve_production
    from edgeci.tools import ostree

    production = resolve_production(cfg.path(cfg.prod.repo), cfg.prod.url, ref)
    if not production.commit:
        return "production is empty (first release): no delta"
    if production.commit == commit:
        return "the candidate is production's commit: no delta"
    if not ostree.has_commit(repo, production.commit):
        local = cfg.path(cfg.prod.repo)
        if (local / "config").is_file():
            ostree.pull_local(repo, local, [production.commit])
        else:
            ostree.remote_add(repo, "edgeci-prod", production.url)
            ostree.pull(repo, "edgeci-prod", [f"{ref}@{production.commit}"])
            ostree.delete_ref(repo, f"edgeci-prod:{ref}")
            ostree.remote_delete(repo, "edgeci-prod")
    ostree.static_delta_generate(repo, commit, from_=production.commit)
    ostree.summary_update(repo)
    return f"{production.commit[:12]} -> {commit[:12]} ({production.source})"


def _check_sha256(path: Path, expected: object) -> None:
    from edgeci.errors import StageError
    from edgeci.oci import sha256_file

    if not expected or not path.is_file():
        return  # open_image names a missing file
    if sha256_file(path) != str(expected).removeprefix("sha256:"):
        raise StageError("the compose archive does not match the sha256 in the build record (changed since compose)",
                         where=str(path), fix="run 'edgeci compose' again")


def _extract_image(cfg: Config, kind: str, details: dict[str, Any], compose: dict[str, Any], sdir: Path,
                   steps: Steps) -> Extracted:
    """Verify the image's layers, then extract the repo (the pushed image by digest, or the archive)."""
    from edgeci.image import extract_pushed, open_image, populate_from_image
    from edgeci.tools.skopeo import Access

    max_bytes = cfg.stage.max_archive_bytes
    steps.begin("verify layers")
    if kind == "archive":
        where = str(cfg.path(str(compose.get("artifact") or "")))
        with open_image(where, max_bytes=max_bytes) as src:  # refuses an oversize archive before reading it
            _check_sha256(Path(where), compose.get("artifact_sha256"))
            # populate_from_image verifies every layer before it extracts anything
            extracted = populate_from_image(src, sdir, repo_path=cfg.stage.repo_path, max_bytes=max_bytes)
    else:
        digest, destination = str(details["digest"]), str(details["destination"])
        where = f"{destination}@{digest}"
        access = None if destination.startswith(("oci:", "oci-archive:")) else Access.from_config(cfg)
        extracted = extract_pushed(destination, digest, sdir, repo_path=cfg.stage.repo_path, max_bytes=max_bytes,
                                   resolve=cfg.path, access=access, scratch_parent=sdir)
    steps.end(f"{where}: {len(extracted.layers)} layer(s) verified: "
              + ", ".join(layer.digest for layer in extracted.layers))
    steps.begin("extract")
    steps.end(f"{extracted.entries} entries, {extracted.bytes} bytes -> {extracted.repo}")
    return extracted


def stop(args: argparse.Namespace, cfg: Config) -> int:
    from edgeci.reposerver import stop_server
    from edgeci.target import target
    from edgeci.ui import say

    name, arch = target(cfg, args)
    from edgeci.target import is_image

    if is_image(cfg, name):
        say(f"stage {name}/{arch}: image mode: the stage is the registry's stage tag, no server to stop")
        return 0
    pid = stop_server(stage_dir(cfg, name, arch))
    if pid is None:
        say(f"stage {name}/{arch}: no stage server running")
    else:
        say(f"stage {name}/{arch}: stopped the stage server (pid {pid})")
    return 0


@invalidates("stage")
def wait(args: argparse.Namespace, cfg: Config) -> int:
    from edgeci.errors import ConfigError, EdgeCIError
    from edgeci.junit import write_junit
    from edgeci.stagehost import wait_for_commit
    from edgeci.target import load_record, target
    from edgeci.ui import progress, say

    name, arch = target(cfg, args)
    from edgeci.target import is_image

    if is_image(cfg, name):  # image mode: the registry serves the candidate digest under the stage tag
        from edgeci.imagemode import stages as _image

        return _image.stage(cfg, name, arch, load_record(cfg, name, arch), "wait", args.deadline)
    url = (args.url or cfg.stage.url).rstrip("/")
    if not url:
        raise ConfigError("stage.url is empty: nothing to wait for", where="stage.url",
                          fix="set stage.url to the stage host's repo URL, e.g. http://stage:8080/repo")
    rec = load_record(cfg, name, arch)
    rec.require("blueprint", "compose")
    if rec.get("push") is not None:
        rec.require("push")
    commit = rec.checksum
    ref = rec.ref(cfg.ref(name, arch))
    deadline = cfg.stage.wait_deadline if args.deadline is None else args.deadline
    say(f"stage {name}/{arch}: waiting up to {deadline:g} s for {url} to serve {ref} = {commit}")
    steps = Steps()
    steps.begin("served commit")
    try:
        served = wait_for_commit(url, ref, commit, deadline=deadline, interval=cfg.stage.wait_interval,
                                 progress=progress(f"stage {name}/{arch}"))
    except EdgeCIError as e:
        steps.fail(e)
        write_junit(cfg.reports_dir, "stage", name, arch, steps.cases)
        raise
    steps.end(f"{url}/refs/heads/{ref} = {served}")
    rec.set("stage", {"url": url, "commit": served, "mode": "wait", "dir": "", "pid": None})
    rec.save()
    report = write_junit(cfg.reports_dir, "stage", name, arch, steps.cases)
    say(f"stage {name}/{arch}: {url} serves {served}; report {report}")
    return 0


def units(args: argparse.Namespace, cfg: Config) -> int:
    from edgeci.record import BuildRecord, atomic_write_text
    from edgeci.stagehost import render_units, units_image
    from edgeci.target import record_file, target, work_dir
    from edgeci.ui import say

    name, arch = target(cfg, args)
    rp = record_file(cfg, name, arch)
    push = BuildRecord.load(rp).get("push") if rp.exists() else None
    image = units_image(cfg, name, push)
    files = render_units(cfg, name, image)
    out = Path(args.output) if args.output else work_dir(cfg, name, arch) / "stage-host"
    for fname, text in files.items():
        atomic_write_text(out / fname, text, mode=0o755 if fname.endswith(".sh") else 0o644)
        say(f"stage {name}/{arch}: wrote {out / fname}")
    return 0


def run(args: argparse.Namespace, cfg: Config) -> int:
    return int({"serve": serve, "stop": stop, "wait": wait, "units": units}[args.action](args, cfg))
