"""The release report: a static HTML page (no JavaScript) and its JSON, one per blueprint × arch.

collect() gathers what people ask about a release — production history, the candidate's stage
timeline, boot-test results, package and file changes, delta against full size — from the build
record and the production repo; render_html() turns that into one self-contained page.
"""

from __future__ import annotations

import html
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgeci.record import SECTIONS, BuildRecord, atomic_write_text


@dataclass
class ReportData:
    blueprint: str
    arch: str
    version: str = ""
    commit: str = ""
    decision: str = ""
    releases: list[dict[str, Any]] = field(default_factory=list)  # newest first
    timeline: list[dict[str, Any]] = field(default_factory=list)  # [{stage, status, seconds, time}]
    boot_test: dict[str, Any] = field(default_factory=dict)  # scenario -> {outcome, reason, checks}
    packages: dict[str, list[str]] = field(default_factory=dict)  # added/removed/changed
    files: dict[str, list[str]] = field(default_factory=dict)  # added/modified/deleted
    delta_bytes: int | None = None
    full_bytes: int | None = None
    image: str = ""
    # image mode (bootc): digest, base, layers (digest, size), full_bytes (every layer: a new device),
    # update_bytes (the layers production lacks), downloaded_bytes (what the boot test's device downloaded)
    image_mode: dict[str, Any] = field(default_factory=dict)
    generated: str = ""
    # the chain of evidence: who signed what, when ({role, key, what, time, verified}), and where it was checked
    evidence: list[dict[str, str]] = field(default_factory=list)
    evidence_policy: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def timeline_from_record(record: BuildRecord) -> list[dict[str, Any]]:
    rows = []
    for name in SECTIONS:
        sec = record.get(name)
        if sec is None:
            continue
        rows.append({"stage": name.replace("_", "-"), "status": sec.get("status", ""),
                     "seconds": sec.get("seconds"), "time": sec.get("time", "")})
    return rows


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _fmt_bytes(n: int | None) -> str:
    from edgeci.fmt import human_bytes

    return "n/a" if n is None else human_bytes(n)


def _delta_chart(delta: int | None, full: int | None) -> str:
    """Two horizontal bars, inline SVG: the update as a static delta against a full pull."""
    if not delta or not full:
        return '<p class="muted">No delta measured (first release, or no upgrade scenario ran).</p>'
    width = 420
    d_w = max(2, round(width * min(delta, full) / full))
    pct = 100.0 * delta / full
    shown = f"{pct:.2f}%" if pct < 1 else f"{pct:.1f}%"
    return (
        f'<svg role="img" aria-label="delta {shown} of full" width="{width + 160}" height="64" '
        f'xmlns="http://www.w3.org/2000/svg" font-family="sans-serif" font-size="12">'
        f'<text x="0" y="16">full pull</text><rect x="80" y="4" width="{width}" height="16" fill="#9aa5b1"/>'
        f'<text x="{80 + width + 6}" y="16">{_esc(_fmt_bytes(full))}</text>'
        f'<text x="0" y="44">delta</text><rect x="80" y="32" width="{d_w}" height="16" fill="#2f7d32"/>'
        f'<text x="{80 + d_w + 6}" y="44">{_esc(_fmt_bytes(delta))} ({shown})</text></svg>'
    )


_CSS = """
body{font-family:system-ui,sans-serif;margin:2rem;max-width:70rem;color:#1f2933}
h1{margin-bottom:.2rem} h2{margin-top:2rem;border-bottom:1px solid #d9e2ec}
table{border-collapse:collapse;width:100%} th,td{text-align:left;padding:.3rem .6rem;border-bottom:1px solid #e4e7eb}
code{font-size:.9em} .muted{color:#7b8794}
.passed,.approved,.healthy{color:#2f7d32;font-weight:600} .failed,.denied,.error{color:#c62828;font-weight:600}
.skipped,.pending{color:#b26a00;font-weight:600}
.badge{display:inline-block;padding:.1rem .5rem;border-radius:.3rem;background:#f0f4f8}
pre{white-space:pre-wrap;overflow-wrap:anywhere;background:#f5f7fa;padding:.5rem;max-height:12rem;overflow:auto;margin:0}
td:first-child{white-space:nowrap}
"""


def render_html(d: ReportData) -> str:
    out: list[str] = []
    add = out.append
    add("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">")
    add(f"<title>edgeci release report — {_esc(d.blueprint)} {_esc(d.version)}</title>")
    add(f"<style>{_CSS}</style></head><body>")
    add(f"<h1>{_esc(d.blueprint)} <span class=\"muted\">{_esc(d.arch)}</span></h1>")
    add(f"<p>Candidate <strong id=\"candidate-version\">{_esc(d.version or '?')}</strong> · commit "
        f"<code id=\"candidate-commit\">{_esc(d.commit[:12] or '?')}</code>")
    if d.decision:
        add(f" · gate <span class=\"{_esc(d.decision)}\">{_esc(d.decision)}</span>")
    if d.image:
        add(f" · image <code>{_esc(d.image)}</code>")
    add(f"</p><p class=\"muted\">Generated {_esc(d.generated)}</p>")

    add("<h2 id=\"history\">Production release history</h2>")
    if d.releases:
        add("<table><tr><th>Version</th><th>Commit</th><th>Approved by</th><th>Date</th><th>Note</th></tr>")
        for r in d.releases:
            approvers = ", ".join(str(a) for a in r.get("approvers", []) or [])
            note = "rollback of " + str(r["rollback_of"]) if r.get("rollback_of") else ""
            add(f"<tr><td>{_esc(r.get('version', ''))}</td><td><code>{_esc(str(r.get('checksum', ''))[:12])}"
                f"</code></td><td>{_esc(approvers or '—')}</td><td>{_esc(r.get('time', ''))}</td>"
                f"<td>{_esc(note)}</td></tr>")
        add("</table>")
    else:
        add("<p class=\"muted\">Production is empty: this is the first release.</p>")

    add("<h2 id=\"evidence\">Chain of evidence</h2>")
    if d.evidence:
        checked = (f"checked against {_esc(d.evidence_policy)}" if d.evidence_policy
                   else "not checked: no trust policy on this machine")
        add(f"<p class=\"muted\">Signed in-toto statements about commit {_esc(d.commit[:12])}; {checked}.</p>")
        add("<table><tr><th>Statement</th><th>Signed by</th><th>When</th><th>Signature</th></tr>")
        for row in d.evidence:
            ok = row.get("verified", "")
            cls = "passed" if ok == "yes" else ("failed" if ok.startswith("no") else "")
            add(f"<tr><td>{_esc(row.get('what', ''))}</td><td>the {_esc(row.get('role', ''))} key "
                f"{_esc(row.get('key', ''))}</td><td>{_esc(row.get('time', ''))}</td>"
                f"<td class=\"{cls}\">{_esc(ok or 'not checked')}</td></tr>")
        add("</table>")
    else:
        add("<p class=\"muted\">No signed evidence for this candidate yet (compose and boot-test sign it with their "
            "keys).</p>")

    add("<h2 id=\"timeline\">Stage timeline</h2><table><tr><th>Stage</th><th>Result</th>"
        "<th>Duration</th><th>Finished</th></tr>")
    for row in d.timeline:
        secs = row.get("seconds")
        dur = f"{secs:.1f} s" if isinstance(secs, int | float) else "—"
        add(f"<tr><td>{_esc(row['stage'])}</td><td class=\"{_esc(row['status'])}\">{_esc(row['status'])}</td>"
            f"<td>{dur}</td><td>{_esc(row.get('time', ''))}</td></tr>")
    add("</table>")

    add("<h2 id=\"boot-test\">Boot test</h2>")
    scenarios = d.boot_test.get("scenarios", {}) if d.boot_test else {}
    if not scenarios:
        add("<p class=\"muted\">No boot test has run for this candidate.</p>")
    order = ["install", "upgrade", "rollback"]
    for name, sc in sorted(scenarios.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)):
        outcome = sc.get("outcome", "")
        add(f"<h3>{_esc(name)} <span class=\"badge {_esc(outcome)}\">{_esc(outcome)}</span></h3>")
        if sc.get("reason"):
            add(f"<p class=\"muted\">{_esc(sc['reason'])}</p>")
        checks = sc.get("checks") or []
        if checks:
            add("<table><tr><th>Check</th><th>Result</th><th>Output</th></tr>")
            for c in checks:
                output = str(c.get("output", ""))
                cell = f"<pre>{_esc(output)}</pre>" if output.strip() else ""
                add(f"<tr><td>{_esc(c.get('name', ''))}</td><td class=\"{_esc(c.get('outcome', ''))}\">"
                    f"{_esc(c.get('outcome', ''))}</td><td>{cell}</td></tr>")
            add("</table>")

    add("<h2 id=\"changes\">Changes against production</h2>")
    for title, groups in (("Packages", d.packages), ("Files", d.files)):
        items = [(k, v) for k, v in groups.items() if v]
        if not items:
            add(f"<p><strong>{title}:</strong> <span class=\"muted\">no changes recorded</span></p>")
            continue
        add(f"<p><strong>{title}:</strong></p><ul>")
        for kind, entries in items:
            shown = entries[:200]
            more = f" … and {len(entries) - 200} more" if len(entries) > 200 else ""
            add(f"<li>{_esc(kind)} ({len(entries)}): " + ", ".join(f"<code>{_esc(e)}</code>" for e in shown)
                + _esc(more) + "</li>")
        add("</ul>")

    add("<h2 id=\"delta\">Update size</h2>")
    if d.image_mode:
        add(_image_mode_html(d.image_mode))
    else:
        add(_delta_chart(d.delta_bytes, d.full_bytes))
        pull = ((d.boot_test.get("scenarios") or {}).get("upgrade") or {}).get("pull") or {}
        if pull.get("rx_bytes") is not None:
            how = (f"{pull.get('delta_parts')} static delta part(s) and {pull.get('loose_objects')} loose object(s)"
                   if pull.get("used_delta") else "objects (no static delta from what it ran)")
            add(f"<p>Measured on the device: it pulled the update itself through {_esc(how)}; its network interfaces "
                f"received {_esc(_fmt_bytes(pull.get('rx_bytes')))} during the update.</p>")
    add("</body></html>")
    return "\n".join(out)


def _image_mode_html(im: dict[str, Any]) -> str:
    """Image mode: the image and its layers, and what a device downloads for the update (the layers production
    does not have) against the whole image — the image-mode counterpart of the ostree delta chart."""
    rows = "".join(f"<tr><td><code>{_esc(x.get('digest'))}</code></td><td>{_esc(_fmt_bytes(x.get('size')))}</td>"
                   f"<td>{'new' if x.get('new') else 'in production'}</td></tr>" for x in im.get("layers") or [])
    full, update = im.get("full_bytes"), im.get("update_bytes")
    parts = [f"<p>image <code>{_esc(im.get('digest'))}</code> on base {_esc(im.get('base_name') or '?')} "
             f"<code>{_esc(im.get('base_digest') or '?')}</code></p>",
             f"<table><tr><th>layer</th><th>size</th><th></th></tr>{rows}</table>",
             f"<p>update download (changed layers): <strong>{_esc(_fmt_bytes(update))}</strong> of the full image "
             f"{_esc(_fmt_bytes(full))}"
             + (f" ({100.0 * update / full:.2f} %)" if update is not None and full else "") + "</p>"]
    if im.get("downloaded_bytes") is not None:
        parts.append(f"<p>the boot test's device downloaded {_esc(_fmt_bytes(im['downloaded_bytes']))} for the "
                     f"upgrade (layers, config and manifest) — {_esc(im.get('device') or '')}</p>")
    parts.append(_delta_chart(update, full))
    return "\n".join(parts)


def write(d: ReportData, out_dir: Path) -> tuple[Path, Path]:
    """reports/report-<bp>-<arch>.html and .json, written atomically."""
    from edgeci.tools.run import mask

    html_path = out_dir / f"report-{d.blueprint}-{d.arch}.html"
    json_path = out_dir / f"report-{d.blueprint}-{d.arch}.json"
    atomic_write_text(html_path, mask(render_html(d)))
    atomic_write_text(json_path, mask(json.dumps(d.as_dict(), indent=2, sort_keys=True)) + "\n")
    return html_path, json_path
