"""The Cloud API v2 backend: osbuild-composer's /api/image-builder-composer/v2, on-premises or hosted.

On-premises it is reached over its unix socket (/run/cloudapi/api.socket) or HTTPS; the hosted service
needs an OAuth2 access token, obtained with the refresh-token grant (composer.token_url,
composer.client_id, the refresh/offline token in EDGECI_COMPOSER_TOKEN), refreshed once on a 401.
Tokens are registered as secrets and never logged. The blueprint travels inline, converted from the
TOML to the API's Blueprint object: TOML spellings become the API's (tls-verify → tls_verify, a
filesystem's size → minsize, integer sizes → the string form), values the schema would refuse are
refused here with the blueprint's file:line, and keys the API does not define are dropped with a
warning (the server would refuse the whole request otherwise).

Image types and upload targets follow the published API (openapi.v2.yml's ImageTypes and UploadTypes
enums, and imagerequest.go's targetSupportMap / getDefaultTarget): a pair composer would answer with
400 ErrorInvalidUploadTarget (or a type its enum lacks) is refused before any request, naming the fix.
"""

from __future__ import annotations

import json
import logging
import re
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import requests

from edgeci.composer import artifact as artifacts
from edgeci.composer.base import (
    Composer,
    ComposeRequest,
    ComposeResult,
    ComposeState,
    ComposeStatus,
    ProgressFn,
    wait_compose,
)
from edgeci.composer.weldr import (
    CONNECT_TIMEOUT,
    READ_TIMEOUT,
    ComposerUnreachable,
    lineage_warnings,
    make_session,
    prod_ref_tip,
    stream_to_file,
)
from edgeci.errors import BlueprintError, ComposerError, ConfigError
from edgeci.tools.run import mask, register_secret

if TYPE_CHECKING:
    from edgeci.config import Config

log = logging.getLogger("edgeci.composer.cloud")

API_PATH = "/api/image-builder-composer/v2"
CLOUD_SOCKET = "/run/cloudapi/api.socket"
WELDR_SOCKET = "/run/weldr/api.socket"
TOKEN_MARGIN = 30.0  # refresh this long before the access token expires

# edgeci image type → the Cloud API's image_type, per distro family (openapi.v2.yml, ImageTypes enum).
# The enum has no edge-simplified-installer / edge-raw-image: RHEL's are not reachable through the Cloud
# API (composer maps iot-simplified-installer / iot-raw-image to Fedora's image types only).
IMAGE_TYPES: dict[str, dict[str, str | None]] = {
    "edge-commit": {"rhel": "edge-commit", "fedora": "iot-commit"},
    "edge-container": {"rhel": "edge-container", "fedora": "iot-container"},
    "edge-installer": {"rhel": "edge-installer", "fedora": "iot-installer"},
    "edge-simplified-installer": {"rhel": None, "fedora": "iot-simplified-installer"},
    "edge-raw-image": {"rhel": None, "fedora": "iot-raw-image"},
}
# imagerequest.go targetSupportMap(), restricted to the image types above: upload_targets[].type → types.
TARGET_SUPPORT: dict[str, frozenset[str]] = {
    "local": frozenset({"edge-commit", "edge-container", "edge-installer", "iot-commit", "iot-installer",
                        "iot-raw-image"}),
    "aws.s3": frozenset({"edge-commit", "edge-installer", "iot-commit", "iot-installer", "iot-raw-image"}),
    "container": frozenset({"edge-container", "iot-container"}),
}
# imagerequest.go getDefaultTarget(): the target top-level upload_options go to (no support-map check).
DEFAULT_TARGET = {"edge-commit": "aws.s3", "edge-installer": "aws.s3", "iot-commit": "aws.s3",
                  "iot-installer": "aws.s3", "iot-raw-image": "aws.s3", "iot-simplified-installer": "aws.s3",
                  "edge-container": "container", "iot-container": "container"}


def distro_family(distro: str) -> str:
    """"fedora" for Fedora distributions (whose edge types are iot-*), "rhel" for RHEL and CentOS."""
    return "fedora" if distro.startswith("fedora") else "rhel"


def api_image_type(image_type: str, distro: str) -> str:
    """The Cloud API image_type for an edgeci image type on a distro; ConfigError when there is none."""
    names = IMAGE_TYPES.get(image_type)
    if names is None:
        raise ConfigError(f"image type '{image_type}' has no Cloud API equivalent",
                          fix=f"use one of: {', '.join(IMAGE_TYPES)}")
    api = names[distro_family(distro)]
    if api is None:
        raise ConfigError(f"the Cloud API cannot build {image_type} for {distro}: its ImageTypes have no such "
                          f"RHEL type (only Fedora's {names['fedora']})", where="composer.backend",
                          fix=f"compose {image_type} with composer.backend weldr (the Weldr API builds it), or "
                              "compose an edge-commit/edge-installer through the Cloud API")
    return api


def upload_for(api_type: str, target: str, region: str) -> dict[str, Any]:
    """The image_request keys that send the artifact where edgeci can download it from, or ConfigError.

    "local" keeps it on the composer for GET /composes/{id}/download (upload_targets, checked against
    targetSupportMap); "aws.s3" is the default target of the commit/installer types (upload_options),
    handing back a presigned URL. A type whose only targets are elsewhere (a container registry) is
    refused: edgeci could not download what it composed."""
    if target == "local":
        if api_type in TARGET_SUPPORT["local"]:
            return {"upload_targets": [{"type": "local", "upload_options": {}}]}
        others = sorted({t for t, types in TARGET_SUPPORT.items() if api_type in types}
                        | ({DEFAULT_TARGET[api_type]} if api_type in DEFAULT_TARGET else set()))
        fix = ("set composer.upload_target aws.s3 and composer.upload_region (composer uploads it to S3)"
               if "aws.s3" in others else
               "compose an edge-commit instead (Fedora's iot-commit can be kept locally), or use a RHEL "
               "distro, whose edge-container composer keeps locally")
        raise ConfigError(f"osbuild-composer cannot keep a {api_type} for download (upload target local); "
                          f"its targets for {api_type}: {', '.join(others) or 'none'}",
                          where="composer.upload_target", fix=fix)
    if target == "aws.s3":
        if DEFAULT_TARGET.get(api_type) != "aws.s3":
            raise ConfigError(f"a {api_type} cannot be uploaded to S3 (composer pushes it to a container registry)",
                              where="composer.upload_target",
                              fix="compose an edge-commit, or use upload_target local with an on-premises composer")
        if not region:
            raise ConfigError("upload_target aws.s3 needs a region", where="composer.upload_region",
                              fix="set composer.upload_region, e.g. us-east-1")
        return {"upload_options": {"region": region}}
    raise ConfigError(f"'{target}' is not an upload target edgeci can download from",
                      where="composer.upload_target", fix="use local or aws.s3")


# The Cloud API's Blueprint object (openapi.v2.yml), additionalProperties: false at every level listed.
_ITEMS = {
    "packages": {"name", "version"},
    "modules": {"name", "version"},
    "enabled_modules": {"name", "stream"},
    "groups": {"name"},
    "containers": {"source", "name", "tls_verify"},
}
# TOML spellings of blueprint keys → the Cloud API's (osbuild-composer's blueprint TOML vs openapi.v2.yml).
_RENAMES = {"containers": {"tls-verify": "tls_verify"}}
_CUSTOMIZATIONS: dict[str, set[str] | None] = {  # None: a scalar or free-form value
    "hostname": None, "installation_device": None, "partitioning_mode": None, "fips": None,
    "kernel": {"name", "append"},
    "sshkey": {"user", "key"},
    "user": {"name", "description", "password", "key", "home", "shell", "groups", "uid", "gid"},
    "group": {"name", "gid"},
    "timezone": {"timezone", "ntpservers"},
    "locale": {"languages", "keyboard"},
    "firewall": {"ports", "services", "zones"},
    "services": {"enabled", "disabled", "masked"},
    "filesystem": {"mountpoint", "minsize"},
    "disk": None, "fdo": None, "openscap": None, "ignition": None, "installer": None, "rpm": None,
    "rhsm": None, "cacerts": None,
    "directories": {"path", "mode", "user", "group", "ensure_parents"},
    "files": {"path", "mode", "user", "group", "data"},
    "repositories": {"id", "baseurls", "gpgkeys", "metalink", "mirrorlist", "name", "priority", "enabled",
                     "gpgcheck", "repo_gpgcheck", "sslverify", "filename", "module_hotfixes"},
}
_TOP = {"name", "description", "version", "distro", *_ITEMS, "customizations"}
# Ignition, IgnitionEmbedded, IgnitionFirstboot: additionalProperties false.
_IGNITION = {"embedded": ("config",), "firstboot": ("url",)}
_PARTITIONING_MODES = ("raw", "lvm", "auto-lvm")


def _pick(value: Any, allowed: set[str], where: str, warnings: list[str],
          renames: dict[str, str] | None = None) -> Any:
    if isinstance(value, list):
        return [_pick(v, allowed, f"{where}[{i}]", warnings, renames) for i, v in enumerate(value)]
    if not isinstance(value, dict):
        return value
    out = {}
    for k, v in value.items():
        k = (renames or {}).get(k, k)
        if k in allowed:
            out[k] = v
        else:
            warnings.append(f"blueprint key '{where}.{k}' is not in the Cloud API's blueprint: dropped")
    return out


def _prune(value: Any) -> Any:
    """Drop empty lists/maps/strings (the API has minItems: 1 on some lists and rejects nulls)."""
    if isinstance(value, dict):
        out = {k: _prune(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v not in (None, "", [], {})}
    if isinstance(value, list):
        return [_prune(v) for v in value]
    return value


class _Source:
    """The blueprint's TOML text, to point an error at file:line."""

    def __init__(self, text: str, filename: str) -> None:
        self.lines = text.splitlines()
        self.filename = filename

    def where(self, table: str, key: str | None = None, nth: int = 0) -> str:
        """file:line of `key` in the nth [table] / [[table]] (or of the table header without a key)."""
        header = re.compile(r"^\s*\[\[?\s*" + re.escape(table) + r"\s*\]\]?\s*(#.*)?$")
        seen = -1
        for i, line in enumerate(self.lines):
            if not header.match(line):
                continue
            seen += 1
            if seen != nth:
                continue
            if key is None:
                return f"{self.filename}:{i + 1}"
            for j in range(i + 1, len(self.lines)):
                if re.match(r"^\s*\[", self.lines[j]):
                    break
                if re.match(r"^\s*[\"']?" + re.escape(key) + r"[\"']?\s*=", self.lines[j]):
                    return f"{self.filename}:{j + 1}"
            return f"{self.filename}:{i + 1}"
        return self.filename


def _size(value: Any, where: str) -> str:
    """A minsize as the API's string form (openapi.v2.yml "minsize": a string, "size with data units").

    An integer is bytes (composer parses a unit-less number as bytes); a string passes unchanged."""
    if isinstance(value, bool) or not isinstance(value, int | str) or (isinstance(value, int) and value < 0):
        raise BlueprintError(f"a size must be a number of bytes or a string like \"2 GiB\", not {value!r}",
                             where=where, fix='write minsize = 2147483648 or minsize = "2 GiB"')
    return str(value) if isinstance(value, int) else value


def _filesystems(value: Any, src: _Source) -> list[dict[str, Any]]:
    """[[customizations.filesystem]] as BlueprintFilesystem: mountpoint and minsize (string) both required;
    the TOML's `size` (composer's older spelling) becomes minsize."""
    out = []
    for i, fs in enumerate(value if isinstance(value, list) else [value]):
        where = src.where("customizations.filesystem", None, i)
        if not isinstance(fs, dict):
            raise BlueprintError("a [[customizations.filesystem]] entry must be a table", where=where,
                                 fix="run 'edgeci lint'")
        extra = set(fs) - {"mountpoint", "minsize", "size"}
        if extra:
            key = sorted(extra)[0]
            raise BlueprintError(f"customizations.filesystem has no key '{key}' (the Cloud API refuses it)",
                                 where=src.where("customizations.filesystem", key, i),
                                 fix="keep mountpoint and minsize only")
        if "minsize" in fs and "size" in fs:
            raise BlueprintError("customizations.filesystem sets both size and minsize",
                                 where=src.where("customizations.filesystem", "size", i), fix="keep minsize only")
        size = fs.get("minsize", fs.get("size"))
        if not fs.get("mountpoint") or size is None:
            raise BlueprintError("a customizations.filesystem entry needs mountpoint and minsize (the Cloud API "
                                 "requires both)", where=where, fix='add e.g. minsize = "2 GiB"')
        key = "minsize" if "minsize" in fs else "size"
        out.append({"mountpoint": fs["mountpoint"],
                    "minsize": _size(size, src.where("customizations.filesystem", key, i))})
    return out


def _disk_sizes(value: Any, src: _Source, path: str = "customizations.disk") -> Any:
    """customizations.disk with every minsize (disk, partitions, logical volumes) in the string form."""
    if isinstance(value, list):
        return [_disk_sizes(v, src, path) for v in value]
    if not isinstance(value, dict):
        return value
    return {k: (_size(v, src.where(path, k)) if k == "minsize" else _disk_sizes(v, src, f"{path}.{k}"))
            for k, v in value.items()}


def _ignition(value: Any, src: _Source) -> dict[str, Any]:
    """customizations.ignition: embedded {config} and firstboot {url}, nothing else (the schema refuses it)."""
    if not isinstance(value, dict):
        raise BlueprintError("customizations.ignition must be a table", where=src.where("customizations.ignition"),
                             fix="run 'edgeci lint'")
    out: dict[str, Any] = {}
    for part, item in value.items():
        table = f"customizations.ignition.{part}"
        if part not in _IGNITION:
            raise BlueprintError(f"customizations.ignition has no '{part}' (the Cloud API knows embedded and "
                                 "firstboot)", where=src.where("customizations.ignition", part)
                                 if src.where(table) == src.filename else src.where(table),
                                 fix="remove it, or use ignition.embedded.config / ignition.firstboot.url")
        if not isinstance(item, dict):
            raise BlueprintError(f"{table} must be a table", where=src.where(table), fix="run 'edgeci lint'")
        (required,) = _IGNITION[part]
        for key in item:
            if key != required:
                raise BlueprintError(f"{table} has no key '{key}': the Cloud API's Ignition{part.capitalize()} "
                                     f"takes only '{required}'", where=src.where(table, key),
                                     fix=f"remove '{key}' (put it in the Ignition config the {required} points at)")
        if not isinstance(item.get(required), str) or not item[required]:
            raise BlueprintError(f"{table} needs '{required}' (a string)", where=src.where(table),
                                 fix=f"set {required} = \"…\"")
        out[part] = {required: item[required]}
    return out


def blueprint_to_cloud(data: dict[str, Any], text: str = "",
                       filename: str = "blueprint.toml") -> tuple[dict[str, Any], list[str]]:
    """A blueprint (parsed TOML) as the Cloud API's Blueprint object, and what had to be dropped.

    `text` (the TOML as written) lets a refused value point at its file:line."""
    src = _Source(text, filename)
    warnings: list[str] = []
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key not in _TOP:
            warnings.append(f"blueprint key '{key}' is not in the Cloud API's blueprint: dropped")
        elif key in _ITEMS:
            out[key] = _pick(value, _ITEMS[key], key, warnings, _RENAMES.get(key))
        elif key == "customizations":
            if not isinstance(value, dict):
                raise BlueprintError("'customizations' must be a table", where=src.where("customizations"),
                                     fix="run 'edgeci lint'")
            cust: dict[str, Any] = {}
            for ck, cv in value.items():
                if ck not in _CUSTOMIZATIONS:
                    warnings.append(f"blueprint key 'customizations.{ck}' is not in the Cloud API's blueprint: dropped")
                    continue
                if ck == "filesystem":
                    cust[ck] = _filesystems(cv, src)
                elif ck == "disk":
                    cust[ck] = _disk_sizes(cv, src)
                elif ck == "ignition":
                    cust[ck] = _ignition(cv, src)
                elif ck == "partitioning_mode" and cv not in _PARTITIONING_MODES:
                    raise BlueprintError(f"partitioning_mode '{cv}' is not one of {', '.join(_PARTITIONING_MODES)}",
                                         where=src.where("customizations", "partitioning_mode"),
                                         fix="use raw, lvm or auto-lvm")
                else:
                    allowed = _CUSTOMIZATIONS[ck]
                    cust[ck] = cv if allowed is None else _pick(cv, allowed, f"customizations.{ck}", warnings)
            out["customizations"] = cust
        else:
            out[key] = value
    return _prune(out), warnings


def _render_logs(body: dict[str, Any]) -> str:
    """ComposeLogs' image_builds (worker job results) as readable text."""
    lines: list[str] = []
    for i, build in enumerate(body.get("image_builds") or []):
        if not isinstance(build, dict):
            lines.append(str(build))
            continue
        lines.append(f"== image build {i}")
        output = build.get("osbuild_output") or {}
        for pipeline, stages in (output.get("log") or {}).items():
            for st in stages or []:
                ok = "ok" if st.get("success") else "FAILED"
                lines.append(f"-- {pipeline}: {st.get('type', '?')} {ok}")
                if st.get("output"):
                    lines.append(str(st["output"]).rstrip())
        err = build.get("job_error")
        if err:
            lines.append(f"job error {err.get('id', '')}: {err.get('reason', '')}")
            if err.get("details"):
                lines.append(json.dumps(err["details"], indent=2))
        if not output and not err:
            lines.append(json.dumps(build, indent=2))
    return "\n".join(lines)


class CloudComposer:
    """osbuild-composer's Cloud API v2 (on-premises socket/HTTPS, or the hosted service with OAuth2)."""

    name = "cloud"

    def __init__(self, cfg: Config, *, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        c = cfg.composer
        self._sleep = sleep
        self._clock = clock
        self.retry_delay = 1.0
        self.request_timeout = float(c.request_timeout)
        # An explicitly set socket wins over a URL; weldr's default socket is not the Cloud API's.
        if c.url and c.socket in ("", WELDR_SOCKET):
            base = c.url.rstrip("/")
            if "/api/image-builder-composer/" not in base:
                base += API_PATH
            self.session, _ = make_session(None)
            self.where = base
            self.base = base
        else:
            sock = c.socket if c.socket and c.socket != WELDR_SOCKET else CLOUD_SOCKET
            self.session, prefix = make_session(sock)
            self.where = sock
            self.base = prefix + API_PATH
        self.token_url = c.token_url
        self.client_id = c.client_id
        self._refresh_token = cfg.secret("COMPOSER_TOKEN")
        if self.token_url and not self._refresh_token:
            raise ConfigError("composer.token_url is set but EDGECI_COMPOSER_TOKEN is empty",
                              where="composer.token_url",
                              fix="export EDGECI_COMPOSER_TOKEN=<your offline/refresh token> (a CI secret variable)")
        if self._refresh_token and not self.token_url:
            raise ConfigError("EDGECI_COMPOSER_TOKEN is set but composer.token_url is empty",
                              where="composer.token_url",
                              fix="set composer.token_url to the OAuth2 token endpoint, e.g. https://sso.redhat.com/"
                                  "auth/realms/redhat-external/protocol/openid-connect/token")
        self._access: str | None = None
        self._access_expires = 0.0
        self.warnings: list[str] = []
        self._blueprints: dict[str, dict[str, Any]] = {}
        self._requests: dict[str, ComposeRequest] = {}
        self._downloads: dict[str, tuple[Path, str]] = {}
        self._prod_tip: dict[str, str | None] = {}
        self._status_cache: dict[str, dict[str, Any]] = {}

    def close(self) -> None:
        self.session.close()

    # -- auth ------------------------------------------------------------------------------------
    def _token(self, *, force: bool = False) -> str | None:
        if not self.token_url:
            return None
        if self._access and not force and self._clock() < self._access_expires - TOKEN_MARGIN:
            return self._access
        try:
            r = requests.post(self.token_url, data={"grant_type": "refresh_token", "client_id": self.client_id,
                                                    "refresh_token": self._refresh_token},
                              timeout=(CONNECT_TIMEOUT, 60), allow_redirects=False)
        except requests.RequestException as e:
            raise ComposerUnreachable(f"cannot reach the OAuth2 token endpoint ({type(e).__name__})",
                                      where=self.token_url, fix="check composer.token_url and the network") from None
        try:
            body = r.json()
        except ValueError:
            body = {}
        register_secret(self._refresh_token)
        if isinstance(body, dict):  # every token the endpoint hands out (a rotated refresh token too) is a secret
            for key in ("access_token", "refresh_token", "id_token"):
                if isinstance(body.get(key), str):
                    register_secret(body[key])
        if r.status_code != 200 or not isinstance(body, dict) or not body.get("access_token"):
            reason = f"HTTP {r.status_code}"
            if isinstance(body, dict):
                reason = mask(str(body.get("error_description") or body.get("error") or reason).strip())
                reason = reason.splitlines()[0][:300] if reason else f"HTTP {r.status_code}"
            raise ComposerError(f"the token endpoint refused the refresh token: {reason}", where=self.token_url,
                                fix="renew EDGECI_COMPOSER_TOKEN (offline tokens expire after 30 days unused) and "
                                    "check composer.client_id")
        token = str(body["access_token"])
        register_secret(token)
        self._access = token
        self._access_expires = self._clock() + float(body.get("expires_in") or 300)
        log.debug("obtained an access token (expires in %ss)", body.get("expires_in"))
        return token

    # -- HTTP ------------------------------------------------------------------------------------
    def _send(self, method: str, path: str, *, timeout: float | None = None, stream: bool = False,
              auth: bool = True, **kw: Any) -> requests.Response:
        url = path if path.startswith(("http://", "https://")) else self.base + path
        for attempt in (1, 2):
            headers = dict(kw.pop("headers", None) or {})
            token = self._token(force=attempt == 2) if auth else None
            if token:
                headers["Authorization"] = f"Bearer {token}"
            try:
                resp = self.session.request(method, url, headers=headers, stream=stream, allow_redirects=False,
                                            timeout=(CONNECT_TIMEOUT, timeout or READ_TIMEOUT), **kw)
            except requests.exceptions.ConnectTimeout:
                raise ComposerUnreachable(f"timed out connecting to the Cloud API ({method} {path})",
                                          where=self.where, fix="check composer.url / composer.socket") from None
            except requests.ConnectionError:
                raise ComposerUnreachable("cannot connect to the Cloud API", where=self.where,
                                          fix="check composer.url / composer.socket and that osbuild-composer's "
                                              "cloudapi socket is enabled (osbuild-composer-api.socket)") from None
            log.debug("%s %s -> %s", method, path, resp.status_code)
            if resp.status_code == 401 and token and attempt == 1:
                resp.close()
                log.debug("401: refreshing the access token once")
                kw["headers"] = {k: v for k, v in headers.items() if k != "Authorization"}
                continue
            if resp.status_code == 401:
                raise ComposerError(f"the Cloud API refused {method} {path} with 401 Unauthorized"
                                    + (" even with a fresh token" if token else ""), where=self.where,
                                    fix="check EDGECI_COMPOSER_TOKEN and composer.token_url / client_id")
            return resp
        raise AssertionError("unreachable")

    def _error(self, resp: requests.Response, method: str, path: str) -> ComposerError:
        try:
            body = resp.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and (body.get("reason") or body.get("code")):
            detail = f"{body.get('code', '')}: {body.get('reason', '')}".strip(": ")
            if body.get("details"):
                detail += f" ({json.dumps(body['details'])[:300]})"
            if body.get("operation_id"):
                detail += f" [operation {body['operation_id']}]"
        else:
            detail = " ".join(resp.text.split())[:200] or resp.reason or "error"
        return ComposerError(f"the Cloud API refused {method} {path} (HTTP {resp.status_code}): {detail}",
                             where=self.where)

    def _json(self, method: str, path: str, **kw: Any) -> Any:
        resp = self._send(method, path, **kw)
        if resp.status_code >= 400:
            raise self._error(resp, method, path)
        try:
            return resp.json()
        except ValueError:
            raise ComposerError(f"{method} {path} answered with invalid JSON", where=self.where) from None

    # -- the protocol ----------------------------------------------------------------------------
    def push_blueprint(self, name: str, toml_text: str) -> None:
        """The Cloud API takes the blueprint inline: convert and keep it for start()."""
        try:
            data = tomllib.loads(toml_text)
        except tomllib.TOMLDecodeError as e:
            raise BlueprintError(f"invalid TOML: {e}", fix="run 'edgeci lint' on the blueprint") from None
        if data.get("name") != name:
            raise BlueprintError(f"the blueprint's name is '{data.get('name')}', not '{name}'",
                                 fix="make the file name and the name key agree")
        bp, warnings = blueprint_to_cloud(data, toml_text, f"{name}.toml")
        self.warnings += warnings
        self._blueprints[name] = bp

    def compose_body(self, request: ComposeRequest) -> dict[str, Any]:
        """The POST /compose body for a request (ComposeRequest of openapi.v2.yml)."""
        name = request.blueprint_name
        if name not in self._blueprints:
            self.push_blueprint(name, request.blueprint_toml)
        distro = request.distro or self.cfg.distro(name)
        image_type = api_image_type(request.image_type, distro)
        upload = upload_for(image_type, self.cfg.composer.upload_target, self.cfg.composer.upload_region)
        repos = self.cfg.composer.repositories
        if not repos:
            raise ConfigError("composer.repositories is empty; the Cloud API builds only from the RPM "
                              "repositories the request names", where="composer.repositories",
                              fix="list the baseurls (BaseOS, AppStream, …) under composer.repositories")
        rhsm = self.cfg.composer.rhsm
        ostree: dict[str, Any] = {"ref": request.ref}
        url = request.url or self.cfg.prod.url
        if url and not request.parent and request.ref:
            tip = prod_ref_tip(url, request.ref)
            self._prod_tip[request.ref] = tip
            if tip is None:
                self.warnings.append(f"production ({url}) has no ref '{request.ref}' yet: composing without a parent")
                url = ""
        if url:
            ostree["url"] = url
        if request.parent:
            ostree["parent"] = request.parent
        if rhsm:
            ostree["rhsm"] = True
        image_request: dict[str, Any] = {
            "architecture": request.arch,
            "image_type": image_type,
            "repositories": [{"baseurl": u, "rhsm": rhsm} for u in repos],
            "ostree": {k: v for k, v in ostree.items() if v not in ("", None)},
        }
        if request.size or self.cfg.composer.size:
            image_request["size"] = int(request.size or self.cfg.composer.size)
        image_request.update(upload)
        return {"distribution": distro, "image_request": image_request, "blueprint": self._blueprints[name]}

    def start(self, request: ComposeRequest) -> str:
        body = self.compose_body(request)
        try:
            resp = self._send("POST", "/compose", json=body, timeout=self.request_timeout)
        except ComposerUnreachable:
            raise
        except requests.Timeout:
            # The Cloud API queues depsolving as a job and answers at once; a timeout is not normal,
            # and there is no safe way to find the compose again by blueprint: do not resubmit blindly.
            raise ComposerUnreachable(
                f"POST /compose did not answer within {self.request_timeout:g}s; a compose may have started",
                where=self.where, fix="check GET /composes/ on the server before running the compose again") from None
        if resp.status_code >= 400:
            raise self._error(resp, "POST", "/compose")
        try:
            compose_id = str(resp.json()["id"])
        except (ValueError, KeyError, TypeError):
            raise ComposerError("POST /compose answered without a compose id", where=self.where) from None
        self._requests[compose_id] = request
        return compose_id

    def status(self, compose_id: str) -> ComposeStatus:
        body = self._json("GET", f"/composes/{quote(compose_id)}")
        self._status_cache[compose_id] = body
        status = str(body.get("status", ""))
        image = body.get("image_status") or {}
        detail = str(image.get("status", ""))
        if status == "success":
            state = ComposeState.FINISHED
        elif status == "failure":
            state = ComposeState.FAILED
        elif status == "pending":
            state = ComposeState.WAITING if detail in ("", "pending") else ComposeState.RUNNING
        else:
            raise ComposerError(f"unknown compose status '{status}' for {compose_id}", where=self.where)
        req = self._requests.get(compose_id)
        return ComposeStatus(id=compose_id, state=state, blueprint_name=req.blueprint_name if req else "",
                             image_type=req.image_type if req else "", detail=detail)

    def wait(self, compose_id: str, *, deadline: float | None = None,
             progress: ProgressFn | None = None) -> ComposeStatus:
        c = self.cfg.composer
        return wait_compose(
            self.status, compose_id, deadline=c.deadline if deadline is None else deadline,
            interval=c.poll_interval, max_interval=c.poll_max_interval, progress=progress,
            sleep=self._sleep, clock=self._clock, unreachable=str,
            state_text=lambda st: st.state.value + (f" ({st.detail})" if st.detail and st.state is
                                                    ComposeState.RUNNING else ""))

    def logs(self, compose_id: str) -> str:
        body = self._json("GET", f"/composes/{quote(compose_id)}/logs")
        text = _render_logs(body if isinstance(body, dict) else {})
        err = ((self._status_cache.get(compose_id) or {}).get("image_status") or {}).get("error")
        if err:
            text = f"error {err.get('id', '')}: {err.get('reason', '')}\n" + (
                json.dumps(err.get("details"), indent=2) + "\n" if err.get("details") else "") + text
        return text

    def metadata(self, compose_id: str) -> dict[str, Any]:
        body = self._json("GET", f"/composes/{quote(compose_id)}/metadata")
        return body if isinstance(body, dict) else {}

    def info(self, compose_id: str) -> dict[str, Any]:
        """Packages and commit from the metadata; parent/ref/warnings from the artifact once downloaded."""
        meta = self.metadata(compose_id)
        packages = []
        for p in meta.get("packages") or []:
            if p.get("type", "rpm") != "rpm":
                continue
            pkg = {k: str(p.get(k, "")) for k in ("name", "version", "release", "arch")}
            if p.get("epoch") not in (None, "", "0", 0):
                pkg["epoch"] = str(p["epoch"])
            packages.append(pkg)
        commit = str(meta.get("ostree_commit") or "")
        req = self._requests.get(compose_id)
        out: dict[str, Any] = {"id": compose_id, "packages": packages, "commit": commit, "parent": "", "ref": "",
                               "version": self._version(req, meta), "warnings": list(self.warnings)}
        if compose_id in self._downloads and req is not None and req.image_type in ("edge-commit", "edge-container"):
            path = self._downloads[compose_id][0]
            art = artifacts.inspect(path, req.image_type, ref=req.ref or None)
            if commit and art.commit != commit:
                raise ComposerError(f"the downloaded artifact carries commit {art.commit}, but the compose's metadata "
                                    f"says {commit}", where=str(path), fix="download the artifact again")
            out.update(commit=art.commit, parent=art.parent, ref=art.ref)
            out["warnings"] += lineage_warnings(req, art.parent, self._prod_tip, req.url or self.cfg.prod.url)
        return out

    def download(self, compose_id: str, dest_dir: Path) -> Path:
        """GET /composes/{id}/download; when the artifact went to S3, its upload URL (never with a token)."""
        req = self._requests.get(compose_id)
        default = f"{compose_id}-{artifacts.FILENAMES.get(req.image_type if req else '', 'image')}"
        path = f"/composes/{quote(compose_id)}/download"
        first = self._send("GET", path, stream=True, timeout=max(self.request_timeout, READ_TIMEOUT))
        s3_url = None
        if first.status_code in (400, 404):
            first.close()
            s3_url = self._upload_url(compose_id)
            if not s3_url:
                raise self._error(first, "GET", path)
        pending: list[requests.Response] = [first] if s3_url is None else []

        def send(headers: dict[str, str]) -> requests.Response:
            if pending and not headers:
                return pending.pop()
            if s3_url:  # a presigned URL: no Authorization header, ever
                return self._send("GET", s3_url, stream=True, auth=False, headers=headers,
                                  timeout=max(self.request_timeout, READ_TIMEOUT))
            return self._send("GET", path, stream=True, headers=headers,
                              timeout=max(self.request_timeout, READ_TIMEOUT))

        def check(resp: requests.Response) -> None:
            if resp.status_code >= 400:
                raise self._error(resp, "GET", s3_url or path)

        final, sha, _ = stream_to_file(send, Path(dest_dir), default, check=check, retry_delay=self.retry_delay,
                                       sleep=self._sleep, what=f"artifact of compose {compose_id}", where=self.where)
        self._downloads[compose_id] = (final, sha)
        return final

    def _upload_url(self, compose_id: str) -> str | None:
        body = self._status_cache.get(compose_id) or self._json("GET", f"/composes/{quote(compose_id)}")
        image = body.get("image_status") or {}
        statuses = [image.get("upload_status"), *(image.get("upload_statuses") or [])]
        for st in statuses:
            if isinstance(st, dict) and st.get("status") == "success":
                url = (st.get("options") or {}).get("url")
                if isinstance(url, str) and url.startswith(("http://", "https://")):
                    return url
        return None

    def sha256(self, compose_id: str) -> str:
        return self._downloads[compose_id][1]

    def result(self, compose_id: str, request: ComposeRequest, dest_dir: Path) -> ComposeResult:
        """Download a finished compose and describe it; the artifact's commit must be the metadata's."""
        self._requests.setdefault(compose_id, request)
        path = self.download(compose_id, dest_dir)
        info = self.info(compose_id)
        return ComposeResult(id=compose_id, image_type=request.image_type, artifact=path,
                             sha256=self.sha256(compose_id), commit=info["commit"], ref=info["ref"] or request.ref,
                             parent=info["parent"] if info["ref"] else request.parent, packages=info["packages"],
                             version=info["version"], warnings=info["warnings"])

    @staticmethod
    def _version(req: ComposeRequest | None, meta: dict[str, Any]) -> str:
        """The release version: the blueprint's as composed (the metadata's request, else the request's),
        never the commit's "version" metadata (osbuild stamps the OS release there)."""
        bp = ((meta.get("request") or {}).get("blueprint") or {}) if isinstance(meta.get("request"), dict) else {}
        if isinstance(bp, dict) and bp.get("version"):
            return str(bp["version"])
        if req is None:
            return ""
        return req.blueprint_version or str(tomllib.loads(req.blueprint_toml).get("version") or "")

    def delete(self, compose_id: str) -> None:
        self._json("DELETE", f"/composes/{quote(compose_id)}")


if TYPE_CHECKING:
    def _conforms(cfg: Config) -> Composer:  # mypy proves CloudComposer implements the protocol
        return CloudComposer(cfg)
