"""CloudComposer's POST /compose bodies against osbuild-composer's published Cloud API v2.

The validator below is written from the facts of internal/cloudapi/v2/openapi.v2.yml (schemas named in
each comment) and internal/cloudapi/v2/imagerequest.go (targetSupportMap, getDefaultTarget); every
body edgeci can build for an image type × distro × upload target must pass it, and every pair composer
would refuse must be refused before any request, with one line naming the fix.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from edgeci.composer.base import ComposeRequest
from edgeci.composer.cloud import IMAGE_TYPES, CloudComposer, blueprint_to_cloud
from edgeci.config import load_config
from edgeci.errors import EXIT_ERROR, BlueprintError, ConfigError

# ImageTypes (enum)
SPEC_IMAGE_TYPES = {
    "aws", "aws-ha-rhui", "aws-rhui", "aws-sap-rhui", "azure", "azure-eap7-rhui", "azure-rhui", "azure-sap-rhui",
    "edge-commit", "edge-container", "edge-installer", "gcp", "gcp-rhui", "guest-image", "image-installer",
    "iot-bootable-container", "iot-commit", "iot-container", "iot-installer", "iot-raw-image",
    "iot-simplified-installer", "live-installer", "minimal-raw", "oci", "vsphere", "vsphere-ova", "wsl"}
# UploadTypes (enum)
SPEC_UPLOAD_TYPES = {"aws", "aws.s3", "gcp", "azure", "container", "oci.objectstorage", "pulp.ostree", "local"}
# imagerequest.go targetSupportMap(), the edge/iot entries: upload_targets[].type → image types it takes
SUPPORT = {
    "local": {"edge-commit", "edge-container", "edge-installer", "iot-commit", "iot-installer", "iot-raw-image"},
    "aws.s3": {"edge-commit", "edge-installer", "iot-commit", "iot-installer", "iot-raw-image"},
    "container": {"edge-container", "iot-container", "iot-bootable-container"},
}
# imagerequest.go getDefaultTarget(): the target of top-level upload_options
DEFAULT = {"edge-commit": "aws.s3", "edge-installer": "aws.s3", "iot-commit": "aws.s3", "iot-installer": "aws.s3",
           "iot-raw-image": "aws.s3", "iot-simplified-installer": "aws.s3", "edge-container": "container",
           "iot-container": "container"}
# Blueprint, BlueprintCustomizations (additionalProperties: false)
BLUEPRINT = {"name", "description", "version", "distro", "packages", "modules", "enabled_modules", "groups",
             "containers", "customizations"}
CUSTOMIZATIONS = {"hostname", "kernel", "sshkey", "user", "group", "timezone", "locale", "firewall", "services",
                  "filesystem", "disk", "installation_device", "partitioning_mode", "fdo", "openscap", "ignition",
                  "directories", "files", "repositories", "fips", "installer", "rpm", "rhsm", "cacerts"}


def spec_problems(body: Any) -> list[str]:
    """Every way `body` breaks the Cloud API's ComposeRequest (empty: it conforms)."""
    out: list[str] = []
    # ComposeRequest: additionalProperties false, required distribution, not both customizations and blueprint
    out += [f"ComposeRequest.{k} unknown" for k in set(body) - {"distribution", "image_request", "image_requests",
                                                                "customizations", "koji", "blueprint"}]
    if not isinstance(body.get("distribution"), str) or not body["distribution"]:
        out.append("ComposeRequest.distribution required (string)")
    if "customizations" in body and "blueprint" in body:
        out.append("ComposeRequest: not {required: [customizations, blueprint]}")
    ir = body.get("image_request")
    if not isinstance(ir, dict):
        return [*out, "image_request missing"]
    # ImageRequest: additionalProperties false; required architecture, image_type, repositories
    out += [f"ImageRequest.{k} unknown" for k in set(ir) - {"architecture", "image_type", "repositories", "ostree",
                                                             "upload_targets", "upload_options", "size"}]
    out += [f"ImageRequest.{k} required" for k in ("architecture", "image_type", "repositories") if k not in ir]
    itype = ir.get("image_type")
    if itype not in SPEC_IMAGE_TYPES:  # ImageTypes enum
        out.append(f"ImageTypes has no {itype!r}")
    for r in ir.get("repositories") or []:  # Repository: at least one of baseurl, mirrorlist, metalink
        if not any(isinstance(r.get(k), str) and r[k] for k in ("baseurl", "mirrorlist", "metalink")):
            out.append("Repository needs baseurl, mirrorlist or metalink")
        if "rhsm" in r and not isinstance(r["rhsm"], bool):
            out.append("Repository.rhsm boolean")
    if "size" in ir and (not isinstance(ir["size"], int) or ir["size"] < 0):  # size: x-go-type uint64
        out.append("ImageRequest.size uint64")
    ostree = ir.get("ostree") or {}
    # OSTree: url, contenturl, ref, parent strings; rhsm boolean; contenturl needs url (ErrorInvalidOSTreeParams)
    out += [f"OSTree.{k} unknown" for k in set(ostree) - {"url", "contenturl", "ref", "parent", "rhsm"}]
    if "contenturl" in ostree and "url" not in ostree:
        out.append("OSTree.contenturl without url")
    for t in ir.get("upload_targets") or []:
        # UploadTarget: required type (UploadTypes), upload_options; targetSupportMap check
        if t.get("type") not in SPEC_UPLOAD_TYPES or "upload_options" not in t:
            out.append(f"UploadTarget {t!r}")
        elif itype not in SUPPORT.get(t["type"], set()):
            out.append(f"ErrorInvalidUploadTarget: {t['type']} for {itype}")
        elif t["type"] == "local" and t["upload_options"] != {}:  # LocalUploadOptions: no properties
            out.append("LocalUploadOptions take no properties")
    if "upload_options" in ir:
        target = DEFAULT.get(str(itype))
        opts = ir["upload_options"]
        if target is None:
            out.append(f"no default target for {itype}")
        elif target == "aws.s3" and (set(opts) - {"region", "public"} or not isinstance(opts.get("region"), str)):
            out.append("AWSS3UploadOptions: region required, additionalProperties false")
        elif target == "container":
            out.append(f"{itype}'s default target is a container registry (not downloadable)")
    if not ir.get("upload_targets") and "upload_options" not in ir:
        out.append("no upload target: nothing to download")
    bp = body.get("blueprint")
    if isinstance(bp, dict):
        out += blueprint_problems(bp)
    return out


def blueprint_problems(bp: dict[str, Any]) -> list[str]:
    out = [f"Blueprint.{k} unknown" for k in set(bp) - BLUEPRINT]  # Blueprint: additionalProperties false
    if not isinstance(bp.get("name"), str):
        out.append("Blueprint.name required")
    for p in bp.get("packages") or []:  # Package: required name; name, version
        out += [f"Package.{k} unknown" for k in set(p) - {"name", "version"}]
    for c in bp.get("containers") or []:  # Container: required source; tls_verify boolean
        if "source" not in c:
            out.append("Container.source required")
        out += [f"Container.{k} unknown" for k in set(c) - {"source", "name", "tls_verify"}]
        if "tls_verify" in c and not isinstance(c["tls_verify"], bool):
            out.append("Container.tls_verify boolean")
    cust = bp.get("customizations") or {}
    out += [f"BlueprintCustomizations.{k} unknown" for k in set(cust) - CUSTOMIZATIONS]
    for fs in cust.get("filesystem") or []:  # BlueprintFilesystem: required mountpoint, minsize (minsize: string)
        if set(fs) - {"mountpoint", "minsize"} or not isinstance(fs.get("mountpoint"), str) \
                or not isinstance(fs.get("minsize"), str):
            out.append(f"BlueprintFilesystem {fs!r}")
    disk = cust.get("disk")
    if disk is not None:  # Disk: required partitions; every minsize a string
        if "partitions" not in disk:
            out.append("Disk.partitions required")
        out += _minsize_strings(disk, "Disk")
    ign = cust.get("ignition")
    if ign is not None:  # Ignition, IgnitionEmbedded {config}, IgnitionFirstboot {url}: additionalProperties false
        out += [f"Ignition.{k} unknown" for k in set(ign) - {"embedded", "firstboot"}]
        if "firstboot" in ign and set(ign["firstboot"]) != {"url"}:
            out.append(f"IgnitionFirstboot {ign['firstboot']!r}")
        if "embedded" in ign and set(ign["embedded"]) != {"config"}:
            out.append(f"IgnitionEmbedded {ign['embedded']!r}")
    for key, values in (cust.get("services") or {}).items():  # Services: minItems 1
        if not values:
            out.append(f"Services.{key} minItems 1")
    if cust.get("partitioning_mode") not in (None, "raw", "lvm", "auto-lvm"):
        out.append("partitioning_mode enum")
    return out


def _minsize_strings(value: Any, where: str) -> list[str]:
    if isinstance(value, list):
        return [p for v in value for p in _minsize_strings(v, where)]
    if not isinstance(value, dict):
        return []
    out = [f"{where}.minsize must be a string (minsize schema)"] if "minsize" in value and not isinstance(
        value["minsize"], str) else []
    return out + [p for k, v in value.items() if k != "minsize" for p in _minsize_strings(v, f"{where}.{k}")]


TOML = """name = "gw"
version = "2.1.0"

[[packages]]
name = "podman"

[[containers]]
source = "quay.io/fleet/agent:1.4"
tls-verify = false

[customizations]
hostname = "gw"
installation_device = "/dev/vda"

[[customizations.filesystem]]
mountpoint = "/var"
minsize = 2147483648

[[customizations.filesystem]]
mountpoint = "/var/log"
size = "4 GiB"

[customizations.disk]
minsize = 21474836480
[[customizations.disk.partitions]]
type = "plain"
mountpoint = "/data"
fs_type = "xfs"
minsize = 1073741824

[customizations.ignition.firstboot]
url = "http://provision.example/config.ig"

[customizations.services]
enabled = ["sshd"]
"""

DISTROS = ("rhel-9.4", "fedora-40")
TARGETS = ("local", "aws.s3")


def composer(tmp_path: Path, target: str) -> CloudComposer:
    return CloudComposer(load_config(env={}, root=tmp_path, overrides={
        "composer.url": "https://composer.example", "composer.repositories": "https://cdn.example/baseos/",
        "composer.upload_target": target, "composer.upload_region": "us-east-1"}))


def body_for(tmp_path: Path, image_type: str, distro: str, target: str, toml: str = TOML) -> dict[str, Any]:
    request = ComposeRequest("gw", toml, image_type=image_type, ref="rhel/9/x86_64/edge", distro=distro)
    return composer(tmp_path, target).compose_body(request)


# The pairs composer takes (ImageTypes enum, targetSupportMap / getDefaultTarget) and edgeci can download.
SUPPORTED = {
    ("edge-commit", "rhel-9.4", "local"), ("edge-commit", "rhel-9.4", "aws.s3"),
    ("edge-container", "rhel-9.4", "local"),
    ("edge-installer", "rhel-9.4", "local"), ("edge-installer", "rhel-9.4", "aws.s3"),
    ("edge-commit", "fedora-40", "local"), ("edge-commit", "fedora-40", "aws.s3"),
    ("edge-installer", "fedora-40", "local"), ("edge-installer", "fedora-40", "aws.s3"),
    ("edge-simplified-installer", "fedora-40", "aws.s3"),
    ("edge-raw-image", "fedora-40", "local"), ("edge-raw-image", "fedora-40", "aws.s3"),
}


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("distro", DISTROS)
@pytest.mark.parametrize("image_type", list(IMAGE_TYPES))
def test_every_body_conforms_or_the_pair_is_refused_before_the_request(
        tmp_path: Path, image_type: str, distro: str, target: str) -> None:
    if (image_type, distro, target) in SUPPORTED:
        body = body_for(tmp_path, image_type, distro, target)
        assert spec_problems(body) == []
        assert body["image_request"]["image_type"].startswith("iot-" if distro.startswith("fedora") else "edge-")
        return
    with pytest.raises(ConfigError) as e:
        body_for(tmp_path, image_type, distro, target)
    assert e.value.exit_code == EXIT_ERROR and e.value.fix
    assert "\n" not in str(e.value)


def test_the_validator_catches_what_composer_refuses(tmp_path: Path) -> None:
    good = body_for(tmp_path, "edge-commit", "rhel-9.4", "local")
    assert spec_problems(good) == []
    for broken, fact in [
        ({"image_type": "edge-simplified-installer"}, "ImageTypes has no"),
        ({"image_type": "iot-container"}, "ErrorInvalidUploadTarget: local for iot-container"),
        ({"repositories": [{"rhsm": False}]}, "Repository needs baseurl"),
    ]:
        body = {**good, "image_request": {**good["image_request"], **broken}}
        assert any(fact in p for p in spec_problems(body)), (broken, spec_problems(body))
    assert spec_problems({**good, "customizations": {}}) == ["ComposeRequest: not {required: [customizations, "
                                                             "blueprint]}"]
    fs = {**good["blueprint"]["customizations"], "filesystem": [{"mountpoint": "/var", "minsize": 1}]}
    assert spec_problems({**good, "blueprint": {**good["blueprint"], "customizations": fs}})


# -- item by item: each failed on the old code ----------------------------------------------------------

def test_rhel_simplified_installer_and_raw_image_are_refused_not_sent_outside_the_enum(tmp_path: Path) -> None:
    for image_type in ("edge-simplified-installer", "edge-raw-image"):
        with pytest.raises(ConfigError) as e:
            body_for(tmp_path, image_type, "rhel-9.4", "local")
        assert "ImageTypes have no such RHEL type" in str(e.value) and "composer.backend weldr" in str(e.value)
    assert body_for(tmp_path, "edge-raw-image", "fedora-40", "local")["image_request"]["image_type"] == \
        "iot-raw-image"


def test_fedora_edge_container_with_local_target_is_refused_before_the_request(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        body_for(tmp_path, "edge-container", "fedora-40", "local")
    msg = str(e.value)
    assert e.value.exit_code == 2 and "composer.upload_target" in msg
    assert "cannot keep a iot-container for download" in msg and "container" in msg
    assert "Compose an edge-commit instead" in msg
    # a RHEL edge-container is fine with local
    assert body_for(tmp_path, "edge-container", "rhel-9.4", "local")["image_request"]["upload_targets"] == [
        {"type": "local", "upload_options": {}}]


def test_blueprint_sizes_become_the_api_string_form_and_size_maps_to_minsize() -> None:
    bp, warnings = blueprint_to_cloud(tomllib.loads(TOML), TOML, "gw.toml")
    assert bp["customizations"]["filesystem"] == [{"mountpoint": "/var", "minsize": "2147483648"},
                                                  {"mountpoint": "/var/log", "minsize": "4 GiB"}]
    assert bp["customizations"]["disk"] == {"minsize": "21474836480", "partitions": [
        {"type": "plain", "mountpoint": "/data", "fs_type": "xfs", "minsize": "1073741824"}]}
    assert warnings == []


def test_ignition_firstboot_extra_keys_are_refused_with_file_and_line() -> None:
    toml = TOML.replace('url = "http://provision.example/config.ig"',
                        'url = "http://provision.example/config.ig"\nretries = 3')
    with pytest.raises(BlueprintError) as e:
        blueprint_to_cloud(tomllib.loads(toml), toml, "gw.toml")
    line = toml.splitlines().index("retries = 3") + 1
    assert str(e.value).startswith(f"gw.toml:{line}: customizations.ignition.firstboot has no key 'retries'")
    assert "takes only 'url'" in str(e.value)


def test_filesystem_without_size_is_refused_with_file_and_line() -> None:
    toml = 'name = "gw"\nversion = "1.0.0"\n\n[[customizations.filesystem]]\nmountpoint = "/var"\n'
    with pytest.raises(BlueprintError, match=r"^gw\.toml:4: a customizations\.filesystem entry needs mountpoint "
                                             r"and minsize"):
        blueprint_to_cloud(tomllib.loads(toml), toml, "gw.toml")


def test_containers_tls_verify_is_translated_not_dropped() -> None:
    bp, warnings = blueprint_to_cloud(tomllib.loads(TOML), TOML, "gw.toml")
    assert bp["containers"] == [{"source": "quay.io/fleet/agent:1.4", "tls_verify": False}]
    assert not any("tls" in w for w in warnings)
