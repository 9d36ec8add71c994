"""The Weldr API v1 backend: osbuild-composer as composer-cli drives it (/run/weldr/api.socket or TCP).

It handles the real server's quirks: HTTP 200 carrying {"status": false, "errors": [...]} is a failure;
an unparsable body answers 404; POST /compose depsolves before answering (minutes) — after a client
timeout the compose is looked up in the queue by blueprint and version before anything is resubmitted,
so a retry never starts a duplicate; pushing a blueprint whose version equals the stored one makes the
server bump the patch silently — refused here, since lint demands a bump for every change; the log of
a WAITING compose answers 200 with status false. Downloads stream to a temp name with the sha256
computed on the way, resume (Range) or restart when interrupted, and are renamed when complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import socket
import tarfile
import tempfile
import time
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection
from urllib3.connectionpool import HTTPConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

from edgeci.composer import artifact as artifacts
from edgeci.composer.base import (
    Composer,
    ComposeRequest,
    ComposeResult,
    ComposerUnreachable,
    ComposeState,
    ComposeStatus,
    ProgressFn,
    wait_compose,
)
from edgeci.errors import EXIT_FAILED, BlueprintError, ComposeFailed, ComposerError, ConfigError
from edgeci.wait import Waiting, WaitTimeout

if TYPE_CHECKING:
    from edgeci.config import Config

log = logging.getLogger("edgeci.composer.weldr")

API = "/api/v1"
DEFAULT_SOCKET = "/run/weldr/api.socket"
CHUNK = 1 << 20
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 120.0  # every call but POST /compose (cfg.composer.request_timeout) and downloads
DOWNLOAD_ATTEMPTS = 5
# How long after a timed-out POST /compose the compose may still appear (the server keeps depsolving).
LOOKUP_GRACE_MIN = 60.0
WELDR_FIX = ("start osbuild-composer (systemctl enable --now osbuild-composer.socket) and check "
             "composer.socket / --socket; the user needs to be in the 'weldr' group")


# -- errors ---------------------------------------------------------------------------------------

class WeldrAPIError(ComposerError):
    """The server answered a request with {"status": false, "errors": [{"id", "msg"}]} or an HTTP error."""

    def __init__(self, message: str, *, http_status: int = 0, errors: list[dict[str, str]] | None = None,
                 where: str | None = None, fix: str | None = None) -> None:
        self.http_status = http_status
        self.errors = errors or []
        super().__init__(message, where=where, fix=fix)

    @property
    def ids(self) -> list[str]:
        return [e.get("id", "") for e in self.errors]


class DepsolveFailed(ComposeFailed):
    """The blueprint's packages cannot be resolved: the candidate cannot be built (exit 1)."""


class NoWorker(ComposerError):
    """osbuild-composer has no worker for the architecture (infrastructure, exit 2)."""


class BlueprintNotBumped(ComposerError):
    """The blueprint changed but kept its version: the server would bump it silently (exit 1)."""

    exit_code = EXIT_FAILED


# -- transport ------------------------------------------------------------------------------------

class _UnixConnection(HTTPConnection):
    def __init__(self, *args: Any, socket_path: str = "", **kw: Any) -> None:
        self.socket_path = socket_path
        super().__init__(*args, **kw)

    def _new_conn(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if isinstance(self.timeout, int | float):
            sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except TimeoutError:
            sock.close()
            raise ConnectTimeoutError(self, f"timed out connecting to {self.socket_path}") from None
        except OSError as e:
            sock.close()
            raise NewConnectionError(self, f"{self.socket_path}: {e.strerror or e}") from e
        return sock


class _UnixPool(HTTPConnectionPool):
    ConnectionCls = _UnixConnection


class UnixSocketAdapter(HTTPAdapter):
    """requests over a unix socket: mount it on "http+unix://" and use http+unix://NAME/path URLs."""

    def __init__(self, socket_path: str, pool_maxsize: int = 4) -> None:
        self.socket_path = socket_path
        super().__init__(pool_connections=1, pool_maxsize=pool_maxsize, max_retries=0)
        self._pool = _UnixPool("localhost", maxsize=pool_maxsize, socket_path=socket_path)

    def get_connection_with_tls_context(self, request: Any, verify: Any, proxies: Any = None,
                                        cert: Any = None) -> HTTPConnectionPool:
        return self._pool

    def get_connection(self, url: Any, proxies: Any = None) -> HTTPConnectionPool:  # requests < 2.32
        return self._pool

    def request_url(self, request: Any, proxies: Any) -> str:
        return str(request.path_url)

    def close(self) -> None:
        self._pool.close()
        super().close()


def make_session(socket_path: str | None) -> tuple[requests.Session, str]:
    """A requests session and the base URL for a unix socket (or plain HTTP(S) when None)."""
    session = requests.Session()
    session.trust_env = False  # a proxy from the environment must never see the socket's requests
    if socket_path is None:
        return session, ""
    session.mount("http+unix://", UnixSocketAdapter(socket_path))
    return session, "http+unix://composer"


def filename_from_disposition(value: str) -> str | None:
    """The file name in a Content-Disposition header, reduced to a safe base name."""
    m = re.search(r'filename\*?=(?:UTF-8\'\')?"?([^";]+)"?', value or "")
    if not m:
        return None
    name = os.path.basename(m.group(1).strip())
    return name if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name) else None


class _Incomplete(Exception):
    pass


def stream_to_file(
    send: Callable[[dict[str, str]], requests.Response],
    dest_dir: Path,
    default_name: str,
    *,
    check: Callable[[requests.Response], None],
    attempts: int = DOWNLOAD_ATTEMPTS,
    retry_delay: float = 1.0,
    sleep: Callable[[float], None] = time.sleep,
    what: str = "artifact",
    where: str = "",
) -> tuple[Path, str, int]:
    """Stream a GET to dest_dir under a temp name, sha256 on the way; resume or restart when cut.

    `send(headers)` performs the request (stream=True); `check(resp)` raises for error answers.
    Returns (final path, sha256 hex, size). Nothing is left under the final name unless complete.
    """
    dest_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest_dir, prefix=".download-", suffix=".part")
    tmp = Path(tmp_name)
    name: str | None = None
    try:
        with os.fdopen(fd, "wb") as out:
            hasher = hashlib.sha256()
            received = 0
            ranges = False
            failures = 0
            while True:
                headers = {"Range": f"bytes={received}-"} if received and ranges else {}
                if received and not ranges:  # the server cannot resume: start over
                    out.seek(0)
                    out.truncate()
                    hasher, received = hashlib.sha256(), 0
                try:
                    resp = send(headers)
                    with contextlib.closing(resp):
                        check(resp)
                        name = name or filename_from_disposition(resp.headers.get("Content-Disposition", ""))
                        ranges = resp.headers.get("Accept-Ranges", "").lower() == "bytes"
                        if resp.status_code == 206:
                            start = int(re.match(r"bytes (\d+)-", resp.headers.get("Content-Range", "")
                                                 or "bytes 0-").group(1))  # type: ignore[union-attr]
                            if start != received:
                                raise _Incomplete(f"server resumed at byte {start}, not {received}")
                        elif received:  # 200 to a Range request: the whole file again
                            out.seek(0)
                            out.truncate()
                            hasher, received = hashlib.sha256(), 0
                        length = resp.headers.get("Content-Length")
                        total = received + int(length) if length and length.isdigit() else None
                        for chunk in resp.iter_content(CHUNK):
                            out.write(chunk)
                            hasher.update(chunk)
                            received += len(chunk)
                        if total is not None and received != total:
                            raise _Incomplete(f"got {received} of {total} bytes")
                    break
                except (requests.exceptions.ChunkedEncodingError, requests.ConnectionError,
                        requests.Timeout, urllib3.exceptions.HTTPError, _Incomplete) as e:
                    failures += 1
                    log.warning("download of %s interrupted at byte %d (%s); attempt %d of %d",
                                what, received, e, failures + 1, attempts)
                    if failures >= attempts:
                        raise ComposerUnreachable(
                            f"the download of the {what} was interrupted {failures} times (last at byte {received}: "
                            f"{type(e).__name__})", where=where,
                            fix="check the server's health and the network, then run the command again") from None
                    sleep(retry_delay * failures)
            out.flush()
            os.fsync(out.fileno())
        final = dest_dir / (name or default_name)
        os.replace(tmp, final)
        return final, hasher.hexdigest(), received
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def prod_ref_tip(url: str, ref: str) -> str | None:
    """Production's commit for `ref` (GET URL/refs/heads/REF); None when production has no such ref.

    osbuild-composer resolves the parent from this URL and fails a compose whose URL lacks the ref, so
    a first build must go without it; and the compose's parent must equal what the gate will compare.
    """
    if not url.startswith(("http://", "https://")):
        return None
    target = f"{url.rstrip('/')}/refs/heads/{ref}"
    try:
        r = requests.get(target, timeout=(CONNECT_TIMEOUT, 60))
    except requests.RequestException as e:
        raise ComposerUnreachable(f"cannot read the production ref ({type(e).__name__})", where=target,
                                  fix="check prod.url; composer resolves the parent commit from it") from None
    if r.status_code == 404:
        return None
    text = r.text.strip()
    if r.status_code != 200 or not re.fullmatch(r"[0-9a-f]{64}", text):
        raise ComposerError(f"production answered HTTP {r.status_code} for its ref, not a commit checksum",
                            where=target, fix="check prod.url (the URL of the production ostree repo)")
    return text


def lineage_warnings(request: ComposeRequest, parent: str, prod_tip: dict[str, str | None], url: str) -> list[str]:
    """Warnings when the composed commit's parent is not what production (and the gate) will expect."""
    out = []
    if request.parent and parent != request.parent:
        out.append(f"the compose's parent is {parent or '(none)'}, not the requested {request.parent}")
    elif request.ref in prod_tip:
        tip = prod_tip[request.ref]
        if (tip or "") != parent:
            out.append(f"the compose's parent is {parent or '(none)'}, but production's {request.ref} "
                       f"was {tip or '(none)'} when the compose started")
        if tip and url:
            with contextlib.suppress(ComposerError):
                now = prod_ref_tip(url, request.ref)
                if now and now != tip:
                    out.append(f"production's {request.ref} moved from {tip} to {now} during the compose; "
                               "the gate will see a stale parent — compose again")
    return out


def _errors_of(body: Any) -> list[dict[str, str]]:
    errs = body.get("errors") if isinstance(body, dict) else None
    out = []
    for e in errs or []:
        if isinstance(e, dict):
            out.append({"id": str(e.get("id", "")), "msg": str(e.get("msg", ""))})
        else:
            out.append({"id": "", "msg": str(e)})
    return out


def _render_errors(errors: list[dict[str, str]]) -> str:
    return "; ".join(f"{e['id']}: {e['msg']}" if e["id"] else e["msg"] for e in errors) or "no error detail"


def _normalize(value: Any) -> Any:
    """A blueprint with empty values dropped and lists of names sorted, for comparing TOML with JSON."""
    if isinstance(value, dict):
        out = {k: _normalize(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v not in (None, "", [], {}, False)}
    if isinstance(value, list):
        items = [_normalize(v) for v in value]
        try:
            return sorted(items, key=lambda x: json.dumps(x, sort_keys=True))
        except TypeError:
            return items
    return value


def _comparable(bp: Mapping[str, Any]) -> dict[str, Any]:
    """A blueprint for comparing stored (JSON) with pushed (TOML): empties dropped, lists sorted, and the
    distro without dots (osbuild-composer standardizes "rhel-94" to "rhel-9.4" when it stores it)."""
    out = dict(_normalize(dict(bp)))
    if isinstance(out.get("distro"), str):
        out["distro"] = out["distro"].replace(".", "")
    return out


def _first_difference(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str = "") -> str:
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            va, vb = a.get(key), b.get(key)
            if isinstance(va, dict) and isinstance(vb, dict):
                return _first_difference(va, vb, f"{prefix}{key}.")
            return f"{prefix}{key}"
    return ""


def _blueprint_version(toml_text: str) -> tuple[str, dict[str, Any]]:
    try:
        data = tomllib.loads(toml_text)
    except tomllib.TOMLDecodeError as e:
        raise BlueprintError(f"invalid TOML: {e}", fix="run 'edgeci lint' on the blueprint") from None
    version = data.get("version")
    return (version if isinstance(version, str) else ""), data


# -- the backend ----------------------------------------------------------------------------------

class WeldrComposer:
    """osbuild-composer through the Weldr API v1 (composer-cli's API)."""

    name = "weldr"

    def __init__(
        self,
        cfg: Config,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        c = cfg.composer
        self._sleep = sleep
        self._clock = clock
        self.request_timeout = float(c.request_timeout)
        self.retry_delay = 1.0
        # An explicitly set socket (--socket) wins over a URL; the default socket does not.
        if c.url and c.socket in ("", DEFAULT_SOCKET):
            self.where = c.url.rstrip("/")
            self.session, _ = make_session(None)
            self.base = self.where
        else:
            self.where = c.socket
            self.session, self.base = make_session(c.socket)
        self.server: dict[str, Any] | None = None
        self.warnings: list[str] = []
        self._downloads: dict[str, tuple[Path, str]] = {}
        self._artifacts: dict[str, artifacts.ArtifactInfo] = {}
        self._requests: dict[str, ComposeRequest] = {}
        self._prod_tip: dict[str, str | None] = {}

    def close(self) -> None:
        self.session.close()

    # -- HTTP ------------------------------------------------------------------------------------
    def _send(self, method: str, path: str, *, timeout: float | None = None, stream: bool = False,
              **kw: Any) -> requests.Response:
        url = self.base + path
        try:
            resp = self.session.request(method, url, timeout=(CONNECT_TIMEOUT, timeout or READ_TIMEOUT),
                                        stream=stream, allow_redirects=False, **kw)
        except requests.exceptions.ConnectTimeout:
            raise ComposerUnreachable(f"timed out connecting to osbuild-composer ({method} {path})",
                                      where=self.where, fix=WELDR_FIX) from None
        except requests.ConnectionError as e:
            reason = "permission denied" if "Permission denied" in str(e) else "cannot connect to osbuild-composer"
            fix = ("add the user running edgeci to the 'weldr' group (or run it as root)"
                   if reason == "permission denied" else WELDR_FIX)
            raise ComposerUnreachable(reason, where=self.where, fix=fix) from None
        log.debug("%s %s -> %s", method, path, resp.status_code)
        return resp

    def _check(self, resp: requests.Response, method: str, path: str, *, expect_json: bool = True) -> Any:
        """The JSON body, or WeldrAPIError for HTTP errors and 200 with {"status": false}.

        osbuild-composer labels every answer application/json, even compose/log's plain text: with
        expect_json False a body that is not JSON is text, not an error."""
        body: Any = None
        ctype = resp.headers.get("Content-Type", "")
        if "json" in ctype or resp.status_code >= 400:
            try:
                body = resp.json()
            except ValueError:
                body = None
        if resp.status_code >= 400 or (isinstance(body, dict) and body.get("status") is False):
            errors = _errors_of(body)
            if not errors:
                text = " ".join(resp.text.split())[:200]
                errors = [{"id": f"HTTP {resp.status_code}", "msg": text or resp.reason or "error"}]
            raise self._api_error(method, path, resp.status_code, errors)
        if body is None and expect_json:
            raise WeldrAPIError(f"{method} {path} answered with invalid JSON", http_status=resp.status_code,
                                where=self.where, fix="check that the socket/URL is osbuild-composer's Weldr API")
        return body

    def _api_error(self, method: str, path: str, status: int, errors: list[dict[str, str]]) -> WeldrAPIError:
        detail = _render_errors(errors)
        ids = {e["id"] for e in errors}
        fix = None
        if status == 404 and "HTTPError" in ids and method == "POST":
            fix = ("osbuild-composer answers 404 when it cannot parse the request body; this is an edgeci "
                   "bug or an incompatible osbuild-composer — report it with the server's version")
        elif "UnknownBlueprint" in ids:
            fix = "push the blueprint first (edgeci compose pushes it before composing)"
        elif "UnknownUUID" in ids:
            fix = "check the compose id (edgeci record) or list composes with 'composer-cli compose list'"
        return WeldrAPIError(f"osbuild-composer refused {method} {path} (HTTP {status}): {detail}",
                             http_status=status, errors=errors, where=self.where, fix=fix)

    def _json(self, method: str, path: str, *, timeout: float | None = None, **kw: Any) -> Any:
        self._ensure_api()
        resp = self._send(method, path, timeout=timeout, **kw)
        return self._check(resp, method, path)

    def _ensure_api(self) -> None:
        if self.server is None:
            self.server = self.api_status()

    def api_status(self) -> dict[str, Any]:
        """GET /api/status; refuses anything but API "1"."""
        resp = self._send("GET", "/api/status")
        body = self._check(resp, "GET", "/api/status")
        if not isinstance(body, dict):
            raise WeldrAPIError("GET /api/status did not answer a JSON object", where=self.where,
                                fix="check that composer.socket / composer.url points at osbuild-composer")
        api = str(body.get("api", ""))
        backend = str(body.get("backend") or "an unknown backend")
        build = str(body.get("build") or "")
        if api != "1":
            guess = " (lorax-composer?)" if api == "0" and "lorax" not in backend else ""
            raise ComposerError(
                f"the server is {backend}{' ' + build if build else ''} with Weldr API {api or '(none)'}{guess}; "
                "edgeci needs osbuild-composer with API 1", where=self.where,
                fix="install osbuild-composer (it replaces lorax-composer) or point composer.socket at it")
        for msg in body.get("msgs") or []:
            self.warnings.append(f"osbuild-composer: {msg}")
        self.server = body
        return body

    # -- blueprints ------------------------------------------------------------------------------
    def blueprint_info(self, name: str) -> dict[str, Any] | None:
        """The stored blueprint (JSON form), or None when the server has none by that name."""
        body = self._json("GET", f"{API}/blueprints/info/{quote(name)}")
        errors = _errors_of(body)
        if any(e["id"] != "UnknownBlueprint" for e in errors):
            raise self._api_error("GET", f"{API}/blueprints/info/{name}", 200, errors)
        for bp in body.get("blueprints") or []:
            if isinstance(bp, dict) and bp.get("name") == name:
                return bp
        return None

    def push_blueprint(self, name: str, toml_text: str) -> None:
        """POST blueprints/new (text/x-toml), refusing a change that keeps the stored version."""
        version, data = _blueprint_version(toml_text)
        if data.get("name") != name:
            raise BlueprintError(f"the blueprint's name is '{data.get('name')}', not '{name}'",
                                 fix="make the file name and the name key agree")
        stored = self.blueprint_info(name)
        if stored is not None and str(stored.get("version", "")) == version:
            differs = _first_difference(_comparable(stored), _comparable(data))
            if not differs:
                log.debug("blueprint %s %s already stored unchanged; not pushing", name, version)
                return
            raise BlueprintNotBumped(
                f"blueprint '{name}' version {version} is already stored on the server with different content "
                f"(first difference: '{differs}'); osbuild-composer would silently store this change as a new "
                "patch version",
                where=self.where, fix="bump 'version' in the blueprint (lint requires a new version for every change)")
        self._json("POST", f"{API}/blueprints/new", data=toml_text.encode("utf-8"),
                   headers={"Content-Type": "text/x-toml"})
        after = self.blueprint_info(name)
        got = str((after or {}).get("version", ""))
        if got != version:
            raise BlueprintNotBumped(
                f"osbuild-composer stored blueprint '{name}' as version {got or '(none)'}, not {version} "
                "(another client pushed it meanwhile, or the server bumped it)", where=self.where,
                fix="bump 'version' in the blueprint and run the compose again")

    def depsolve(self, name: str) -> list[dict[str, Any]]:
        """GET blueprints/depsolve: the blueprint's full package set."""
        body = self._json("GET", f"{API}/blueprints/depsolve/{quote(name)}")
        errors = _errors_of(body)
        if errors:
            self._raise_depsolve(errors, f"{API}/blueprints/depsolve/{name}")
        for entry in body.get("blueprints") or []:
            if (entry.get("blueprint") or {}).get("name") == name:
                return list(entry.get("dependencies") or [])
        return []

    def freeze(self, name: str) -> dict[str, Any]:
        """GET blueprints/freeze: the blueprint with every package version pinned."""
        body = self._json("GET", f"{API}/blueprints/freeze/{quote(name)}")
        errors = _errors_of(body)
        if errors:
            self._raise_depsolve(errors, f"{API}/blueprints/freeze/{name}")
        for entry in body.get("blueprints") or []:
            bp = entry.get("blueprint") or {}
            if bp.get("name") == name:
                return dict(bp)
        raise WeldrAPIError(f"blueprints/freeze returned no blueprint '{name}'", where=self.where)

    def _raise_depsolve(self, errors: list[dict[str, str]], path: str) -> None:
        if any(e["id"] in ("BlueprintsError", "DepsolveError") for e in errors):
            raise DepsolveFailed(f"the blueprint's packages cannot be resolved: {_render_errors(errors)}",
                                 where=self.where,
                                 fix="check the package names/versions in the blueprint and the composer's sources")
        raise self._api_error("GET", path, 200, errors)

    def compose_types(self, distro: str = "") -> list[str]:
        q = f"?distro={quote(distro)}" if distro else ""
        body = self._json("GET", f"{API}/compose/types{q}")
        return [t["name"] for t in body.get("types") or [] if t.get("enabled", True)]

    # -- composes --------------------------------------------------------------------------------
    def queue(self) -> list[dict[str, Any]]:
        """Every compose the server knows: queue new + run, then finished, then failed."""
        entries: list[dict[str, Any]] = []
        body = self._json("GET", f"{API}/compose/queue")
        entries += list(body.get("new") or []) + list(body.get("run") or [])
        entries += list(self._json("GET", f"{API}/compose/finished").get("finished") or [])
        entries += list(self._json("GET", f"{API}/compose/failed").get("failed") or [])
        return [e for e in entries if isinstance(e, dict)]

    def _matching(self, name: str, version: str, image_type: str) -> list[dict[str, Any]]:
        return [e for e in self.queue() if e.get("blueprint") == name and str(e.get("version", "")) == version
                and (not image_type or e.get("compose_type") == image_type)]

    def start(self, request: ComposeRequest) -> str:
        """POST /compose; after a timeout, find the compose in the queue instead of starting a second one."""
        self._ensure_api()
        name = request.blueprint_name
        version = request.blueprint_version or _blueprint_version(request.blueprint_toml)[0]
        url = request.url or self.cfg.prod.url
        if url and not request.parent and request.ref:
            tip = prod_ref_tip(url, request.ref)
            if tip is None:
                # osbuild-composer fails a compose whose url has no such ref: the first build has no parent.
                self.warnings.append(f"production ({url}) has no ref '{request.ref}' yet: composing without a parent")
                url = ""
            self._prod_tip[request.ref] = tip
        body: dict[str, Any] = {
            "blueprint_name": name,
            "compose_type": request.image_type,
            "branch": "master",
            "size": int(request.size or self.cfg.composer.size or 0),
            "ostree": {"ref": request.ref, "parent": request.parent, "url": url},
        }
        upload = self._upload_settings(name, version)
        if upload:
            body["upload"] = upload
        known = {e.get("id") for e in self._matching(name, version, request.image_type)}
        data = json.dumps(body).encode()
        for attempt in (1, 2):
            try:
                resp = self._send("POST", f"{API}/compose", data=data, timeout=self.request_timeout,
                                  headers={"Content-Type": "application/json"})
            except requests.Timeout:
                log.warning("POST compose timed out after %gs; looking for it in the queue", self.request_timeout)
                found = self._find_after_timeout(name, version, request.image_type, known)
                if found:
                    self.warnings.append(
                        f"POST /compose timed out after {self.request_timeout:g}s; found the compose it started "
                        f"({found}) in the queue instead of submitting it again")
                    self._requests[found] = request
                    return found
                if attempt == 2:
                    break
                continue
            try:
                reply = self._check(resp, "POST", f"{API}/compose")
            except WeldrAPIError as e:
                raise self._compose_error(e, request) from None
            build_id = str((reply or {}).get("build_id") or "")
            if not build_id:
                raise WeldrAPIError("POST /compose answered without a build_id", where=self.where)
            for w in (reply or {}).get("warnings") or []:
                self.warnings.append(f"osbuild-composer: {w}")
            self._requests[build_id] = request
            return build_id
        raise ComposerUnreachable(
            f"POST /compose for '{name}' {version} timed out twice ({self.request_timeout:g}s each) and no such "
            "compose appeared in the queue", where=self.where,
            fix="raise composer.request_timeout (depsolving on a cold cache can take minutes) and check "
                "osbuild-composer's journal")

    def _find_after_timeout(self, name: str, version: str, image_type: str, known: set[Any]) -> str | None:
        # The server keeps depsolving after the client gave up, then creates the compose: poll for it.
        grace = max(LOOKUP_GRACE_MIN, self.request_timeout)
        interval = max(min(self.cfg.composer.poll_interval, 10.0), 0.01)

        def check() -> tuple[str, str | None]:
            new = [e for e in self._matching(name, version, image_type) if e.get("id") not in known]
            if len(new) > 1:
                new.sort(key=lambda e: float(e.get("job_created") or 0))
                self.warnings.append(f"{len(new)} composes of {name} {version} appeared; using the newest")
            return ("not in the queue yet", str(new[-1]["id"]) if new else None)

        try:
            waiting: Waiting[str] = Waiting(deadline=grace, interval=interval, backoff=1.5, max_interval=30.0,
                                            retry_on=(ComposerUnreachable,), sleep=self._sleep, clock=self._clock)
            return waiting.wait(check, what=f"compose of {name} {version} in the queue")
        except WaitTimeout:
            return None

    def _compose_error(self, e: WeldrAPIError, request: ComposeRequest) -> ComposerError:
        detail = _render_errors(e.errors)
        ids = set(e.ids)
        if "DepsolveError" in ids:
            return DepsolveFailed(f"DepsolveError: the packages of blueprint '{request.blueprint_name}' cannot be "
                                  f"resolved: {detail}", where=self.where,
                                  fix="check the package names/versions in the blueprint and the composer's sources")
        if any("No worker for arch" in er["msg"] for er in e.errors):
            return NoWorker(f"osbuild-composer has no worker for arch '{request.arch}' ({detail})", where=self.where,
                            fix="start a worker for that architecture (systemctl start osbuild-worker@1, or "
                                "register a remote worker)")
        if "ComposeError" in ids and "compose type" in detail:
            with contextlib.suppress(ComposerError):
                types = self.compose_types()
                return WeldrAPIError(f"{e.message.rstrip('.')}; this composer builds: {', '.join(types)}",
                                     http_status=e.http_status, errors=e.errors, where=self.where,
                                     fix="set project.image_type / blueprints.<name>.image_type to one of them")
        return e

    def _upload_settings(self, name: str, version: str) -> dict[str, Any] | None:
        profile = self.cfg.composer.upload_profile
        if not profile:
            return None
        path = self.cfg.path(profile)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(f"cannot read the upload profile: {e}", where=str(path),
                              fix="composer.upload_profile names a composer-cli upload profile TOML") from None
        if "provider" not in data:
            raise ConfigError("the upload profile has no 'provider'", where=str(path),
                              fix="see composer-cli's upload profiles: provider = \"aws\" and [settings]")
        return {"provider": data["provider"], "image_name": f"{name}-{version}",
                "settings": data.get("settings", {})}

    def status(self, compose_id: str) -> ComposeStatus:
        body = self._json("GET", f"{API}/compose/status/{quote(compose_id)}")
        for e in body.get("uuids") or []:
            if e.get("id") == compose_id:
                return self._to_status(e)
        raise WeldrAPIError(f"osbuild-composer knows no compose {compose_id}", where=self.where,
                            fix="check the compose id (it may have been deleted)")

    @staticmethod
    def _to_status(e: Mapping[str, Any]) -> ComposeStatus:
        raw = str(e.get("queue_status", "")).upper()
        try:
            state = ComposeState(raw)
        except ValueError:
            raise ComposerError(f"unknown compose state '{raw}' for {e.get('id')}") from None
        return ComposeStatus(
            id=str(e.get("id")), state=state, blueprint_name=str(e.get("blueprint", "")),
            blueprint_version=str(e.get("version", "")), image_type=str(e.get("compose_type", "")),
            queued=e.get("job_created"), started=e.get("job_started"), finished=e.get("job_finished"),
        )

    def wait(self, compose_id: str, *, deadline: float | None = None,
             progress: ProgressFn | None = None) -> ComposeStatus:
        """Poll compose/status until FINISHED or FAILED: 10 s growing to 30 s, restarts retried."""
        c = self.cfg.composer
        return wait_compose(self.status, compose_id, deadline=c.deadline if deadline is None else deadline,
                            interval=c.poll_interval, max_interval=c.poll_max_interval, progress=progress,
                            sleep=self._sleep, clock=self._clock,
                            unreachable=lambda e: f"cannot connect to osbuild-composer at {self.where}")

    # -- results ---------------------------------------------------------------------------------
    def log_text(self, compose_id: str) -> str:
        """GET compose/log: RUNNING → progress text; WAITING answers 200 {"status": false} → a note."""
        path = f"{API}/compose/log/{quote(compose_id)}"
        self._ensure_api()
        resp = self._send("GET", path)
        try:
            self._check(resp, "GET", path, expect_json=False)
        except WeldrAPIError as e:
            if "BuildInWrongState" in e.ids:
                return f"(no log: {_render_errors(e.errors)})"
            raise
        return resp.text

    def logs(self, compose_id: str) -> str:
        """The osbuild log of a FINISHED/FAILED compose (compose/logs' tar) followed by a summary of its
        metadata (the osbuild manifest's pipelines and stages); compose/log's text while it has not ended."""
        path = f"{API}/compose/logs/{quote(compose_id)}"
        self._ensure_api()
        resp = self._send("GET", path)
        try:
            self._check(resp, "GET", path, expect_json=False)
        except WeldrAPIError as e:
            if "BuildInWrongState" in e.ids:
                return self.log_text(compose_id)
            raise
        text = _tar_text(resp.content, where=f"{self.where} {path}")
        try:
            summary = manifest_summary(self.metadata(compose_id))
        except ComposerError as e:
            summary = f"(metadata unavailable: {e.message})"
        return f"{text.rstrip()}\n\n--- compose metadata (osbuild manifest) ---\n{summary}\n" if summary else text

    def metadata(self, compose_id: str) -> dict[str, Any]:
        """The compose's osbuild manifest (compose/metadata is a tar of <uuid>.json)."""
        path = f"{API}/compose/metadata/{quote(compose_id)}"
        self._ensure_api()
        resp = self._send("GET", path)
        self._check(resp, "GET", path, expect_json=False)
        text = _tar_text(resp.content, where=f"{self.where} {path}", suffix=".json")
        try:
            data = json.loads(text) if text else {}
        except json.JSONDecodeError:
            return {"raw": text}
        return data if isinstance(data, dict) else {"value": data}

    def save_failure_files(self, compose_id: str, dest_dir: Path) -> list[Path]:
        """Download <id>-logs.tar and <id>-metadata.tar (for a FAILED compose's JUnit report)."""
        saved = []
        for kind in ("logs", "metadata"):
            path = f"{API}/compose/{kind}/{quote(compose_id)}"
            try:
                self._ensure_api()
                resp = self._send("GET", path)
                self._check(resp, "GET", path, expect_json=False)
            except WeldrAPIError as e:
                self.warnings.append(f"could not download the compose {kind}: {e.message}")
                continue
            dest_dir.mkdir(parents=True, exist_ok=True)
            target = dest_dir / f"{compose_id}-{kind}.tar"
            fd, tmp = tempfile.mkstemp(dir=dest_dir, prefix=f".{kind}-", suffix=".part")
            with os.fdopen(fd, "wb") as f:
                f.write(resp.content)
            os.replace(tmp, target)
            saved.append(target)
        return saved

    def download(self, compose_id: str, dest_dir: Path) -> Path:
        """GET compose/image streamed to dest_dir (temp name, sha256 on the way, resumed or restarted)."""
        self._ensure_api()
        path = f"{API}/compose/image/{quote(compose_id)}"
        req = self._requests.get(compose_id)
        image_type = req.image_type if req else ""
        default = f"{compose_id}-{artifacts.FILENAMES.get(image_type, 'image')}"

        def send(headers: dict[str, str]) -> requests.Response:
            return self._send("GET", path, stream=True, timeout=max(self.request_timeout, READ_TIMEOUT),
                              headers=headers)

        def check(resp: requests.Response) -> None:
            if resp.status_code >= 400 or "json" in resp.headers.get("Content-Type", ""):
                self._check(resp, "GET", path)
                # A JSON answer that is not an error is still not an image: never save it as one.
                raise WeldrAPIError(f"GET {path} answered JSON instead of the image", http_status=resp.status_code,
                                    where=self.where, fix="check that the compose is FINISHED and its type")

        final, sha, _size = stream_to_file(send, Path(dest_dir), default, check=check, retry_delay=self.retry_delay,
                                           sleep=self._sleep, what=f"image of compose {compose_id}",
                                           where=self.where)
        self._downloads[compose_id] = (final, sha)
        return final

    def sha256(self, compose_id: str) -> str:
        """The sha256 computed while downloading the compose's artifact."""
        return self._downloads[compose_id][1]

    def artifact_info(self, compose_id: str, ref: str | None = None) -> artifacts.ArtifactInfo | None:
        if compose_id in self._artifacts:
            return self._artifacts[compose_id]
        if compose_id not in self._downloads:
            return None
        req = self._requests.get(compose_id)
        image_type = req.image_type if req else None
        if image_type not in ("edge-commit", "edge-container"):
            return None
        info = artifacts.inspect(self._downloads[compose_id][0], image_type, ref=ref or (req.ref if req else None))
        self._artifacts[compose_id] = info
        return info

    def info(self, compose_id: str) -> dict[str, Any]:
        """compose/info's packages; "commit"/"parent" from the downloaded artifact ("" before download)."""
        body = self._json("GET", f"{API}/compose/info/{quote(compose_id)}")
        packages = []
        for p in (body.get("deps") or {}).get("packages") or []:
            pkg = {k: str(p.get(k, "")) for k in ("name", "version", "release", "arch")}
            if p.get("epoch"):
                pkg["epoch"] = str(p["epoch"])
            packages.append(pkg)
        art = self.artifact_info(compose_id)
        req = self._requests.get(compose_id)
        warnings = list(self.warnings)
        if art is not None and req is not None:
            warnings += lineage_warnings(req, art.parent, self._prod_tip, req.url or self.cfg.prod.url)
        return {
            "id": compose_id,
            "packages": packages,
            "commit": art.commit if art else "",
            "parent": art.parent if art else "",
            "ref": art.ref if art else "",
            "warnings": warnings,
            # the release version: the blueprint's as composed (compose/info carries it); never the commit's
            # "version" metadata, which osbuild stamps with the OS release
            "version": str((body.get("blueprint") or {}).get("version") or (req.blueprint_version if req else "")),
            "compose_type": body.get("compose_type", ""),
            "queue_status": body.get("queue_status", ""),
            "blueprint": body.get("blueprint") or {},
        }

    def result(self, compose_id: str, request: ComposeRequest, dest_dir: Path) -> ComposeResult:
        """Download a FINISHED compose and describe it: artifact, sha256, commit, parent, packages."""
        self._requests.setdefault(compose_id, request)
        path = self.download(compose_id, dest_dir)
        sha = self.sha256(compose_id)
        art = self.artifact_info(compose_id, request.ref or None)
        info = self.info(compose_id)
        return ComposeResult(
            id=compose_id, image_type=request.image_type, artifact=path, sha256=sha,
            commit=art.commit if art else "", ref=art.ref if art else request.ref,
            parent=art.parent if art else request.parent, packages=info["packages"], version=info["version"],
            warnings=info["warnings"])

    def cancel(self, compose_id: str) -> None:
        self._json("DELETE", f"{API}/compose/cancel/{quote(compose_id)}")

    def delete(self, compose_id: str) -> None:
        body = self._json("DELETE", f"{API}/compose/delete/{quote(compose_id)}")
        errors = _errors_of(body)
        if errors:
            raise self._api_error("DELETE", f"{API}/compose/delete/{compose_id}", 200, errors)


def manifest_summary(manifest: Mapping[str, Any]) -> str:
    """One line per osbuild pipeline with its stage types: which step of the build failed, at a glance."""
    lines = []
    for p in manifest.get("pipelines") or []:
        if isinstance(p, dict):
            stages = [str(st.get("type", "?")) for st in p.get("stages") or [] if isinstance(st, dict)]
            lines.append(f"pipeline {p.get('name', '?')}: {', '.join(stages) or '(no stages)'}")
    if manifest.get("sources"):
        lines.append(f"sources: {', '.join(sorted(manifest['sources']))}")
    return "\n".join(lines)


def _tar_text(data: bytes, *, where: str, suffix: str = ".log") -> str:
    """The text of the files in a small tar (compose/logs, compose/metadata), joined."""
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
            parts = []
            for m in tar.getmembers():
                if m.isfile() and (m.name.endswith(suffix) or suffix == ".log"):
                    f = tar.extractfile(m)
                    if f is not None:
                        parts.append(f.read().decode("utf-8", "replace"))
            return "\n".join(parts)
    except tarfile.TarError:
        raise ComposerError("the server's tar answer is not a valid tar", where=where) from None


if TYPE_CHECKING:
    def _conforms(cfg: Config) -> Composer:  # mypy proves WeldrComposer implements the protocol
        return WeldrComposer(cfg)
