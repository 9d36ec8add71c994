"""The local composer: builds the edgeci test OS (edgeci.testos) into an ostree commit, on this machine.

The embedded default backend, for `make demo`, edgeci's own tests and users without an Image Builder
host. Artifacts are shaped exactly like Image Builder's: edge-commit → <id>-commit.tar (repo/ +
compose.json), edge-container → <id>-container.tar (an OCI archive whose layer holds the repo at
usr/share/nginx/html/repo and a static busybox httpd on port 8080).

State lives under build/composer/: blueprints/ (pushed TOML), repo/ (the archive-mode work repo every
commit goes into; parents come from it or from the request's url), composes/<id>/ (request.json,
status.json, log, result.json, the artifact). start() validates the request and resolves the parent
synchronously (errors raise: exit 2), then builds in a thread. A build that fails on the blueprint's
content ends FAILED (a candidate failure); one that fails on infrastructure (disk full, a tool, the
kernel download) ends FAILED too, and wait() re-raises that error so the CLI exits 2 with its one line.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import threading
import time
import traceback
import uuid
from pathlib import Path
from typing import Any

from edgeci.composer.base import ComposeRequest, ComposeState, ComposeStatus, ProgressFn, wait_compose
from edgeci.config import Config
from edgeci.errors import BlueprintError, ComposerError, EdgeCIError, ToolError
from edgeci.record import atomic_write_text
from edgeci.tools import ostree
from edgeci.tools.run import mask

IMAGE_TYPES = ("edge-commit", "edge-container")
ARTIFACT_NAMES = {"edge-commit": "commit.tar", "edge-container": "container.tar"}
PARENT_REMOTE = "edgeci-parent"
HTML_ROOT = "usr/share/nginx/html"
CONTAINER_CONFIG = {
    "Entrypoint": ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", f"/{HTML_ROOT}"],
    "ExposedPorts": {"8080/tcp": {}},
    "WorkingDir": f"/{HTML_ROOT}",
}


def _now() -> float:
    return time.time()


class LocalComposer:
    """Composer protocol implementation that builds the test OS locally (see module docstring)."""

    name = "local"

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.base = cfg.build_dir / "composer"
        self.repo = self.base / "repo"
        self.blueprints_dir = self.base / "blueprints"
        self.composes_dir = self.base / "composes"
        self._threads: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()
        # status of the composes this process runs: status.json may not be writable (disk full)
        self._memory: dict[str, dict[str, Any]] = {}

    # -- storage -------------------------------------------------------------------------------------
    def _mkdirs(self) -> None:
        for d in (self.blueprints_dir, self.composes_dir):
            try:
                d.mkdir(parents=True, exist_ok=True)
                probe = d / f".probe-{os.getpid()}"
                probe.write_text("")
                probe.unlink()
            except OSError as e:
                raise ComposerError(f"cannot write the local composer's directory: {e.strerror}",
                                    where=str(e.filename or d),
                                    fix="make the build directory writable, or set project.build_dir") from None

    def _dir(self, compose_id: str) -> Path:
        d = self.composes_dir / compose_id
        if not compose_id or "/" in compose_id or not (d / "status.json").is_file():
            raise ComposerError(f"unknown compose '{compose_id}'", where=str(self.composes_dir),
                                fix="use an id printed by 'edgeci compose'")
        return d

    def _read(self, compose_id: str, name: str) -> dict[str, Any]:
        if name == "status.json" and compose_id in self._memory:
            with self._lock:
                return dict(self._memory[compose_id])
        try:
            data = json.loads((self._dir(compose_id) / name).read_text())
        except (OSError, ValueError) as e:
            raise ComposerError(f"cannot read {name} of compose {compose_id}: {e}",
                                where=str(self.composes_dir / compose_id)) from None
        return data if isinstance(data, dict) else {}

    def _status_write(self, d: Path, **changes: Any) -> None:
        path = d / "status.json"
        with self._lock:
            data = self._memory.get(d.name)
            if data is None:
                data = json.loads(path.read_text()) if path.exists() else {}
                self._memory[d.name] = data
            data.update(changes)
            try:
                atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True))
            except OSError:
                if not path.exists():
                    raise  # not even the first status could be written: start() reports it

    def _log(self, d: Path, message: str) -> None:
        with self._lock:
            try:
                with open(d / "log", "a", encoding="utf-8") as f:
                    f.write(f"{time.strftime('%H:%M:%S')} {mask(message)}\n")
            except OSError:
                pass  # a full disk must not hide the error being logged

    # -- protocol ------------------------------------------------------------------------------------
    def push_blueprint(self, name: str, toml_text: str) -> None:
        from edgeci.blueprint import parse

        data = parse(toml_text, f"{name}.toml")
        if data.get("name") != name:
            raise BlueprintError(f"blueprint text is named '{data.get('name')}', not '{name}'",
                                 where=f"{name}.toml", fix="make name = in the TOML match the file name")
        self._mkdirs()
        try:
            # rendered ${NAME} values are registered secrets: the stored copy keeps them masked
            atomic_write_text(self.blueprints_dir / f"{name}.toml", mask(toml_text))
        except OSError as e:
            raise ComposerError(f"cannot store blueprint '{name}': {e.strerror}", where=str(self.blueprints_dir),
                                fix="make the build directory writable") from None

    def start(self, request: ComposeRequest) -> str:
        from edgeci.blueprint import parse
        from edgeci.checks import parse_checks
        from edgeci.testos import find_busybox

        if request.image_type not in IMAGE_TYPES:
            raise ComposerError(f"the local composer builds {' and '.join(IMAGE_TYPES)}, not '{request.image_type}'",
                                fix="use --type edge-container or edge-commit, or composer.backend weldr/cloud")
        if request.arch not in ("x86_64", ""):
            raise ComposerError(f"the local composer builds x86_64 only, not '{request.arch}'",
                                fix="use --arch x86_64, or an Image Builder backend for other architectures")
        if not request.ref or any(c.isspace() for c in request.ref) or request.ref.startswith("/"):
            raise ComposerError(f"invalid ostree ref '{request.ref}'", fix="use a ref like rhel/9/x86_64/edge")
        data = parse(request.blueprint_toml, f"{request.blueprint_name}.toml")
        version = request.blueprint_version or str(data.get("version") or "")
        if not version:
            raise BlueprintError("the blueprint has no version", where=f"{request.blueprint_name}.toml",
                                 fix='add version = "1.0.0"')
        if request.checks_yaml:
            parse_checks(request.checks_yaml, f"{request.blueprint_name}.checks.yaml")
        find_busybox()
        self._mkdirs()
        key = hashlib.sha256(json.dumps(
            [request.as_dict(), request.blueprint_toml, request.checks_yaml], sort_keys=True).encode()).hexdigest()
        for cid, thread in list(self._threads.items()):  # a retried identical request: the running compose
            if thread.is_alive() and self._read(cid, "status.json").get("key") == key:
                return cid
        try:
            ostree.init(self.repo, mode="archive")
        except OSError as e:
            raise ComposerError(f"cannot create the work repo: {e.strerror}", where=str(self.repo)) from None
        parent = self._resolve_parent(request)
        cid = str(uuid.uuid4())
        d = self.composes_dir / cid
        d.mkdir()
        request_data = request.as_dict()
        request_data.update(parent_resolved=parent, version=version)
        atomic_write_text(d / "request.json", json.dumps(request_data, indent=2, sort_keys=True))
        (d / "blueprint.toml").write_text(mask(request.blueprint_toml))
        if request.checks_yaml:
            (d / "checks.yaml").write_text(mask(request.checks_yaml))
        self._status_write(d, id=cid, state=ComposeState.WAITING.value, queued=_now(), pid=os.getpid(), key=key,
                           blueprint_name=request.blueprint_name, blueprint_version=version,
                           image_type=request.image_type, detail="queued")
        self._log(d, f"compose {cid}: {request.blueprint_name} {version} {request.image_type} ref {request.ref}"
                  + (f" parent {parent}" if parent else " (no parent)"))
        thread = threading.Thread(target=self._run, args=(cid, request, data, version, parent),
                                  name=f"compose-{cid[:8]}", daemon=True)
        self._threads[cid] = thread
        thread.start()
        return cid

    def status(self, compose_id: str) -> ComposeStatus:
        s = self._read(compose_id, "status.json")
        state = ComposeState(s.get("state", "FAILED"))
        if not state.done and not self._alive(compose_id, s):
            state = ComposeState.FAILED
            self._status_write(self._dir(compose_id), state=state.value, finished=_now(),
                               detail="the composer process exited before the compose finished")
            s = self._read(compose_id, "status.json")
        return ComposeStatus(id=compose_id, state=state, blueprint_name=s.get("blueprint_name", ""),
                             blueprint_version=s.get("blueprint_version", ""), image_type=s.get("image_type", ""),
                             queued=s.get("queued"), started=s.get("started"), finished=s.get("finished"),
                             detail=s.get("detail", ""))

    def _alive(self, compose_id: str, s: dict[str, Any]) -> bool:
        thread = self._threads.get(compose_id)
        if thread is not None:
            return thread.is_alive() or ComposeState(self._read(compose_id, "status.json")["state"]).done
        pid = int(s.get("pid") or 0)
        if pid == os.getpid():
            return False  # built by a thread of this process that no longer exists
        try:
            os.kill(pid, 0)
        except (ProcessLookupError, PermissionError, OverflowError, ValueError):
            return False
        return True

    def wait(self, compose_id: str, *, deadline: float, progress: ProgressFn | None = None) -> ComposeStatus:
        result = wait_compose(
            self.status, compose_id, deadline=deadline, interval=0.1, max_interval=1.0, progress=progress,
            state_text=lambda st: st.state.value + (f" ({st.detail})" if st.detail and not st.state.done else ""),
            final_progress=True)
        error = self._read(compose_id, "status.json").get("error")
        if result.state is ComposeState.FAILED and error:
            raise ComposerError(error["message"], fix=error.get("fix"),
                                where=error.get("where") or f"compose {compose_id}")
        return result

    def logs(self, compose_id: str) -> str:
        path = self._dir(compose_id) / "log"
        return path.read_text(errors="replace") if path.exists() else ""

    def download(self, compose_id: str, dest_dir: Path) -> Path:
        st = self.status(compose_id)
        if st.state is not ComposeState.FINISHED:
            raise ComposerError(f"compose {compose_id} is {st.state.value}, there is no artifact to download")
        result = self._read(compose_id, "result.json")
        src = self._dir(compose_id) / result["artifact"]
        if not src.is_file():
            raise ComposerError(f"the artifact of compose {compose_id} is missing", where=str(src),
                                fix="compose again")
        dest = Path(dest_dir) / src.name
        tmp = dest.with_name(f".{dest.name}.part")
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            if tmp.exists():
                tmp.unlink()
            try:
                os.link(src, tmp)
            except OSError:
                shutil.copyfile(src, tmp)
            os.replace(tmp, dest)
        except OSError as e:
            if tmp.exists():
                tmp.unlink()
            raise ComposerError(f"cannot write the artifact: {e.strerror}", where=str(e.filename or dest),
                                fix="free space or make the directory writable") from None
        return dest

    def info(self, compose_id: str) -> dict[str, Any]:
        status = self._read(compose_id, "status.json")
        result = self._read(compose_id, "result.json") if (self._dir(compose_id) / "result.json").exists() else {}
        request = self._read(compose_id, "request.json")
        return {
            "id": compose_id,
            "state": status.get("state"),
            "blueprint": request.get("blueprint_name"),
            "version": request.get("version"),
            "image_type": request.get("image_type"),
            "ref": request.get("ref"),
            "parent": request.get("parent_resolved", ""),
            "url": request.get("url", ""),
            "commit": result.get("commit", ""),
            "packages": result.get("packages", []),
            "warnings": result.get("warnings", []),
            "artifact": result.get("artifact", ""),
            "os": result.get("os", ""),  # device | busybox: which OS the local composer built
        }

    # -- parent -------------------------------------------------------------------------------------
    def _resolve_parent(self, request: ComposeRequest) -> str:
        parent, url, ref = request.parent.strip(), request.url.strip(), request.ref
        if parent and not ostree.is_checksum(parent):
            raise ComposerError(f"parent '{parent}' is not a commit checksum",
                                fix="give the 64-hex checksum (ostree rev-parse REF)")
        if not url:
            if parent and not (self.repo / "objects" / parent[:2] / f"{parent[2:]}.commit").is_file():
                raise ComposerError(f"parent commit {parent} is not in the local composer's repo",
                                    where=str(self.repo), fix="give --url of the repository that has it")
            return parent
        ostree.remote_add(self.repo, PARENT_REMOTE, url)
        target = parent or ref
        try:
            ostree.pull(self.repo, PARENT_REMOTE, [target], commit_metadata_only=True, timeout=600)
        except ToolError as e:
            reason = (e.stderr.strip().splitlines() or [""])[-1].removeprefix("error: ")
            what = f"parent commit {parent}" if parent else f"ref '{ref}' (to take the parent from)"
            raise ComposerError(f"{what} does not exist at {url}" + (f": {reason}" if reason else ""),
                                where=url, fix="check --url and --parent (a first build has neither)") from None
        if parent:
            return parent
        resolved = ostree.rev_parse(self.repo, f"{PARENT_REMOTE}:{ref}")
        if not resolved:
            raise ComposerError(f"ref '{ref}' does not resolve at {url}", where=url,
                                fix="check --url and --ref, or give --parent")
        return resolved

    # -- the build ----------------------------------------------------------------------------------
    def _run(self, cid: str, request: ComposeRequest, data: dict[str, Any], version: str, parent: str) -> None:
        d = self.composes_dir / cid
        failure: dict[str, Any] = {}
        try:
            self._status_write(d, state=ComposeState.RUNNING.value, started=_now(), detail="starting")
            self._build(cid, d, request, data, version, parent)
        except BlueprintError as e:  # the blueprint's content: a candidate failure
            failure = {"detail": str(e), "log": f"FAILED: {e}"}
        except EdgeCIError as e:  # infrastructure: wait() re-raises it
            failure = {"detail": str(e), "log": f"ERROR: {e}",
                       "error": {"message": e.message, "where": e.where, "fix": e.fix}}
        except OSError as e:
            msg = f"the local composer could not write: {e.strerror}"
            where = str(e.filename) if e.filename and str(e.filename).startswith(str(self.base)) else str(self.base)
            failure = {"detail": msg, "log": f"ERROR: {msg} ({e.filename})",
                       "error": {"message": msg, "where": where,
                                 "fix": "free disk space or make the build directory writable"}}
        except Exception as e:  # a bug: FAILED with the traceback in the log
            failure = {"detail": f"internal error: {type(e).__name__}: {e}",
                       "log": "internal error:\n" + traceback.format_exc()}
        finally:
            # first free the space (a full disk is one way to get here), then record the outcome
            for leftover in (d / "tree", d / "repo"):
                shutil.rmtree(leftover, ignore_errors=True)
            for part in d.glob(".*.part"):  # never leave a half-written artifact behind
                part.unlink(missing_ok=True)
            if failure:
                failure["detail"] = mask(str(failure["detail"]))
                self._log(d, failure.pop("log"))
                self._status_write(d, state=ComposeState.FAILED.value, finished=_now(), **failure)

    def _device_tree(self, d: Path, request: ComposeRequest, data: dict[str, Any], version: str,
                     checks: Any, busybox: Path) -> tuple[list[dict[str, str]], list[str]]:
        """The Debian device OS (edgeci.deviceos): packages mapped, root filesystem (cached), the tree."""
        from edgeci.deviceos.packages import blueprint_package_names, plan
        from edgeci.deviceos.rootfs import ensure_rootfs
        from edgeci.deviceos.tree import build_device_tree
        from edgeci.testos.kernel import cache_dir

        pkgs = plan(blueprint_package_names(data), self.cfg.composer.package_map,
                    where=f"{request.blueprint_name}.toml")
        cust = data.get("customizations") if isinstance(data.get("customizations"), dict) else {}
        tz = cust.get("timezone") if isinstance(cust, dict) else None
        extra = list(pkgs.debian)
        if isinstance(tz, dict) and tz.get("ntpservers") and "chrony" not in extra:
            extra.append("systemd-timesyncd")  # an NTP client for the servers (chrony when the blueprint has it)
        for name, debian in sorted(pkgs.mapping.items()):
            self._log(d, f"package {name} -> {debian}")
        self._step(d, "root filesystem")
        rootfs = ensure_rootfs(extra, cache_dir=cache_dir(self.cfg.composer.cache_dir),
                               mirror=self.cfg.composer.apt_mirror)
        self._log(d, f"root filesystem {rootfs.tar.name} ({'cached' if rootfs.cached else 'built with mmdebstrap'}"
                  f" from {rootfs.sources}): {len(rootfs.packages)} requested packages")
        self._step(d, "tree")
        tree = build_device_tree(d / "tree", rootfs.tar, name=request.blueprint_name, version=version, data=data,
                                 checks=checks, busybox=busybox)
        self._log(d, f"device OS tree: kernel {tree.kver}, {len(tree.packages)} installed packages")
        return tree.packages, tree.warnings

    def _step(self, d: Path, detail: str) -> None:
        self._status_write(d, detail=detail)
        self._log(d, detail)

    def _build(self, cid: str, d: Path, request: ComposeRequest, data: dict[str, Any], version: str,
               parent: str) -> None:
        from edgeci.checks import parse_checks
        from edgeci.oci import LayerEntry, sha256_file, write_archive
        from edgeci.testos import applets, find_busybox, initramfs
        from edgeci.testos.kernel import ensure_kernel
        from edgeci.testos.tree import build_tree

        started = time.monotonic()
        checks = parse_checks(request.checks_yaml, f"{request.blueprint_name}.checks.yaml") \
            if request.checks_yaml else None
        busybox = find_busybox()
        if self.cfg.composer.os == "device":
            packages, warnings = self._device_tree(d, request, data, version, checks, busybox)
        else:
            self._step(d, "kernel")
            kernel = ensure_kernel(self.cfg.composer.kernel, self.cfg.composer.cache_dir)
            warnings = list(kernel.notes)
            self._log(d, f"kernel {kernel.kver} ({kernel.source}); modules: "
                      + ", ".join(p.rsplit("/", 1)[-1] for p in kernel.load_order))
            applet_paths = applets(busybox)
            self._step(d, "tree")
            image = initramfs.build(kernel, busybox, [a.rsplit("/", 1)[-1] for a in applet_paths])
            tree = build_tree(d / "tree", name=request.blueprint_name, version=version, data=data, checks=checks,
                              kernel=kernel, initramfs=image, busybox=busybox, applets=applet_paths)
            warnings += tree.warnings
            packages = [kernel.package, _busybox_package()]
        for w in warnings:
            self._log(d, f"warning: {w}")

        self._step(d, "commit")
        metadata = {"version": version, "edgeci.blueprint": request.blueprint_name,
                    "edgeci.git-sha": request.git_sha, "edgeci.compose-id": cid}
        commit = ostree.commit(self.repo, request.ref, tree_dir=d / "tree",
                               subject=f"{request.blueprint_name} {version}", metadata=metadata,
                               parent=parent or "none",
                               owner_root=self.cfg.composer.os != "device")  # the device OS keeps dpkg's owners
        self._log(d, f"commit {commit} on {request.ref}" + (f", parent {parent}" if parent else ""))
        shutil.rmtree(d / "tree")

        self._step(d, "artifact")
        repo = d / "repo"
        ostree.init(repo, mode="archive")
        ostree.pull_local(repo, self.repo, [commit])
        ostree.set_ref(repo, request.ref, commit)
        ostree.summary_update(repo)
        name = f"{cid}-{ARTIFACT_NAMES[request.image_type]}"
        if request.image_type == "edge-container":
            write_archive(d / name, [[LayerEntry(busybox, "bin/busybox"), LayerEntry(repo, f"{HTML_ROOT}/repo")]],
                          config=CONTAINER_CONFIG, architecture="amd64")
        else:
            compose_json = d / "compose.json"
            compose_json.write_text(json.dumps({"ref": request.ref, "ostree-commit": commit}))
            part = d / f".{name}.part"
            with tarfile.open(part, "w", format=tarfile.PAX_FORMAT) as tar:
                tar.add(repo, arcname="repo", filter=_root_owned)
                tar.add(compose_json, arcname="compose.json", filter=_root_owned)
            os.replace(part, d / name)
        shutil.rmtree(repo)
        result = {"artifact": name, "commit": commit, "ref": request.ref, "parent": parent, "packages": packages,
                  "os": self.cfg.composer.os,
                  "warnings": warnings, "sha256": sha256_file(d / name),
                  "seconds": round(time.monotonic() - started, 2)}
        atomic_write_text(d / "result.json", mask(json.dumps(result, indent=2, sort_keys=True)))
        self._log(d, f"artifact {name} ({(d / name).stat().st_size} bytes) in {result['seconds']} s")
        self._status_write(d, state=ComposeState.FINISHED.value, finished=_now(), detail="")


def _root_owned(ti: tarfile.TarInfo) -> tarfile.TarInfo:
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = "root"
    return ti


def _busybox_package() -> dict[str, str]:
    from edgeci.tools.run import have, run

    if not have("dpkg-query"):
        return {"name": "busybox-static", "version": "unknown", "release": "", "arch": "amd64"}
    r = run(["dpkg-query", "-W", "-f=${Version} ${Architecture}", "busybox-static"], check=False, timeout=30)
    version, _, arch = r.stdout.strip().partition(" ") if r.ok else ("", "", "")
    version = version.split(":", 1)[-1]
    upstream, _, release = version.rpartition("-") if "-" in version else (version, "", "")
    return {"name": "busybox-static", "version": upstream or "unknown", "release": release, "arch": arch or "amd64"}
