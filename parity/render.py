"""Writes a parity report: report.json, report.md, report.html (self-contained) and the plots as PNG.

Every file is written under a temporary name and renamed when complete, so an
interrupted run never leaves a half-written report behind.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import re
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402

from vit_jax.formats.base import atomic_outputs  # noqa: E402

DEPTH_PLOT = "error_vs_depth.png"
LOSS_PLOT = "loss_curves.png"
SECTION_TITLES = {
    "forward": "Layers (forward, canonical order)",
    "gradients": "Gradients (per parameter)",
    "update": "Parameters after one AdamW step",
    "loss": "Loss curves",
}


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf"
        return f"{value:.6f}" if 0.9 <= value <= 1.0 else f"{value:.2e}"
    return str(value)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


# -- tables -------------------------------------------------------------------
def _columns(section: str) -> list[tuple[str, str]]:
    cols = [("name", {"forward": "layer", "loss": "step"}.get(section, "parameter"))]
    if section in ("gradients", "update"):
        cols.append(("torch_name", "torch key"))
    if section == "loss":
        cols += [("jax", "jax loss"), ("torch", "torch loss"), ("jax_f64", "f64 jax loss"),
                 ("torch_f64", "f64 torch loss")]
    else:
        cols.append(("shape", "shape"))
    cols += [("max_abs", "max abs"), ("mean_abs", "mean abs"), ("rel_l2", "rel L2"), ("cosine", "cosine")]
    cols += [("jax_vs_f64", "jax vs f64"), ("torch_vs_f64", "torch vs f64"), ("f64_jax_vs_torch", "f64 jax vs torch"),
             ("rounding_ratio", "rounding ratio")]
    return cols + [("status", "pass")]


def _status(row: dict[str, Any]) -> str:
    if not row["judged"]:
        return "n/j" if not row.get("note") else "n/j*"
    return "PASS" if row["passed"] else "FAIL"


def _cell(row: dict[str, Any], key: str) -> str:
    if key == "status":
        return _status(row)
    if key == "shape":
        return "x".join(map(str, row["shape"])) or "scalar"
    return _fmt(row.get(key))


def _section_rows(report: dict[str, Any], section: str) -> list[dict[str, Any]]:
    return [r for r in report["rows"] if r["section"] == section]


def _md_table(rows: list[dict[str, Any]], cols: list[tuple[str, str]]) -> list[str]:
    lines = ["| " + " | ".join(title for _, title in cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row, key) for key, _ in cols) + " |")
    return lines


def _headline(report: dict[str, Any]) -> str:
    failure = report["first_failure"]
    if failure is None:
        return f"**PASS**: all {report['summary']['judged']} judged rows within tolerance."
    where = SECTION_TITLES[failure["section"]].split(" (")[0].lower()
    return (
        f"**FAIL**: {report['summary']['failed']} of {report['summary']['judged']} judged rows out of tolerance. "
        f"First failure: `{failure['name']}` ({where}): {failure['check']}."
    )


def _setup_lines(report: dict[str, Any]) -> list[tuple[str, str]]:
    env = report["environment"]
    cfg = report["config"]
    items = [
        ("config", f"{cfg['name']} (hidden {cfg['hidden_size']}, mlp {cfg['mlp_dim']}, heads {cfg['num_heads']}, "
                   f"layers {cfg['num_layers']}, image {cfg['image_size']}, patch {cfg['patch_size']}, "
                   f"classifier {cfg['classifier']}, gelu {cfg['gelu']}, ln eps {cfg['layer_norm_eps']:g}, "
                   f"qkv_bias {cfg['qkv_bias']}, posemb {cfg['posemb']}, scan {cfg['scan']})"),
        ("dtype", f"{report['dtype']} compute, {cfg['param_dtype']} parameters"),
        ("weights", report["weights"]),
        ("inputs", report["inputs"]),
        ("precision", env["precision"]),
        ("devices", f"jax: {env['jax_device']}; torch: {env['torch_device']}; float64 references on CPU"),
        ("versions", ", ".join(f"{k} {v}" for k, v in env["versions"].items())),
        ("host", env["host"]),
    ]
    if report.get("loss_definition"):
        items.append(("loss", report["loss_definition"]))
    if report.get("optimizer"):
        opt = report["optimizer"]
        hp = ", ".join(f"{k}={v:g}" for k, v in opt["hyperparameters"].items())
        items.append(("optimizer",
                      f"optax.adamw vs torch.optim.AdamW ({hp}), {opt['steps']} steps. {opt['semantics']}"))
    items.append(("timings", ", ".join(f"{k} {v:.1f}s" for k, v in report["timings_s"].items())))
    if "peak_rss_bytes" in report:
        items.append(("peak RSS", f"{report['peak_rss_bytes'] / 2**30:.2f} GiB (whole process; "
                                  f"{report['peak_rss_after_weights_bytes'] / 2**30:.2f} GiB once the weights and "
                                  "inputs were ready)"))
    return items


def _tolerance_lines(report: dict[str, Any]) -> list[str]:
    tol = report["tolerances"]
    lines = ["| rows | bound |", "|---|---|"]
    # A bound such as ||jax - torch|| holds pipes, which would split the markdown cell.
    lines += [f"| {k} | {v.replace('|', chr(92) + '|')} |" for k, v in tol["criteria"].items()]
    return lines


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# Parity report: JAX/Flax vs PyTorch, {report['config']['name']}, {report['dtype']}", "",
             _headline(report), ""]
    lines += [f"- **{k}**: {v}" for k, v in _setup_lines(report)]
    lines += ["", f"## Tolerances ({report['dtype']})", "", report["tolerances"]["rule"], ""] + _tolerance_lines(report)
    lines += ["", report["tolerances"]["relative_error"], ""]
    lines += [f"Zero-gradient rule: {report['tolerances']['zero_gradient']}", ""]
    for section in ("forward", "gradients", "update", "loss"):
        rows = _section_rows(report, section)
        if rows:
            lines += [f"## {SECTION_TITLES[section]}", ""]
            lines += _md_table(rows, _columns(section)) + [""]
            notes = sorted({r["note"] for r in rows if r.get("note")})
            lines += [f"n/j* = not judged: {note}." for note in notes] + ([""] if notes else [])
    lines += [f"![error vs depth]({DEPTH_PLOT})", ""]
    if _section_rows(report, "loss"):
        lines += [f"![loss curves]({LOSS_PLOT})", ""]
    return "\n".join(lines)


def _html_table(rows: list[dict[str, Any]], cols: list[tuple[str, str]]) -> str:
    head = "".join(f"<th>{html.escape(t)}</th>" for _, t in cols)
    body = []
    for row in rows:
        cls = "fail" if row["judged"] and not row["passed"] else ""
        cells = "".join(f"<td>{html.escape(_cell(row, k))}</td>" for k, _ in cols)
        body.append(f'<tr class="{cls}">{cells}</tr>')
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _md_inline_to_html(text: str) -> str:
    """The headline's **bold** and `code` spans, escaped."""
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html.escape(text))
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def html_page(report: dict[str, Any], plots: dict[str, bytes]) -> str:
    css = (
        "body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;font-size:13px}"
        "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}td:first-child,th:first-child{text-align:left}"
        "tr.fail td{background:#fdd}.verdict{font-size:1.2em}"
    )
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>Parity report {html.escape(report['config']['name'])} "
        f"{report['dtype']}</title><style>{css}</style></head><body>",
        f"<h1>Parity report: JAX/Flax vs PyTorch, {html.escape(report['config']['name'])}, {report['dtype']}</h1>",
        f"<p class='verdict'>{_md_inline_to_html(_headline(report))}</p><ul>",
    ]
    parts += [f"<li><b>{html.escape(k)}</b>: {html.escape(str(v))}</li>" for k, v in _setup_lines(report)]
    parts.append("</ul>")
    for name, png in plots.items():
        parts.append(f"<img alt='{name}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>")
    tol = report["tolerances"]
    parts.append(f"<h2>Tolerances ({report['dtype']})</h2><p>{html.escape(tol['rule'])}</p>"
                 "<table><tr><th>rows</th><th>bound</th></tr>")
    parts += [f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in tol["criteria"].items()]
    parts.append(f"</table><p>{html.escape(tol['relative_error'])}</p><p>Zero-gradient rule: "
                 f"{html.escape(tol['zero_gradient'])}</p>")
    for section in ("forward", "gradients", "update", "loss"):
        rows = _section_rows(report, section)
        if rows:
            parts.append(f"<h2>{SECTION_TITLES[section]}</h2>")
            parts.append(_html_table(rows, _columns(section)))
            for note in sorted({r["note"] for r in rows if r.get("note")}):
                parts.append(f"<p>n/j* = not judged: {html.escape(note)}.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


# -- plots --------------------------------------------------------------------
def _log_safe(values: list[float | None]) -> list[float]:
    return [max(v, 1e-17) if v is not None and math.isfinite(v) else float("nan") for v in values]


def depth_plot(report: dict[str, Any]) -> bytes:
    rows = _section_rows(report, "forward")
    criteria = report["tolerances"]["layer_bounds"]
    uses_cosine = criteria.get("min_cosine") is not None
    fig, axes = plt.subplots(2 if uses_cosine else 1, 1, figsize=(11, 7 if uses_cosine else 4.5), squeeze=False)
    ax = axes[0][0]
    x = [r["depth"] for r in rows]
    series = [("rel_l2", "jax vs torch", "C0", "o"), ("jax_vs_f64", "jax vs float64", "C1", "."),
              ("torch_vs_f64", "torch vs float64", "C2", "."), ("f64_jax_vs_torch", "float64: jax vs torch", "C3", "x")]
    for key, label, color, marker in series:
        ax.semilogy(x, _log_safe([r[key] for r in rows]), marker=marker, color=color, label=label, lw=1)
    failing = [r for r in rows if r["judged"] and not r["passed"]]
    if failing:
        ax.semilogy([r["depth"] for r in failing], _log_safe([r["rel_l2"] for r in failing]), "rx", ms=10, label="fail")
    if criteria.get("max_rel_l2") is not None:
        ax.axhline(criteria["max_rel_l2"], color="r", ls="--", lw=1, label=f"tolerance {criteria['max_rel_l2']:g}")
    ax.set_ylabel("relative L2 error")
    ax.set_title(f"{report['config']['name']} {report['dtype']}: error against depth")
    ax.legend(fontsize=8)
    ax.grid(True, which="major", alpha=0.3)
    if uses_cosine:
        ax2 = axes[1][0]
        ax2.semilogy(x, _log_safe([1 - r["cosine"] if r["cosine"] is not None else None for r in rows]), "o-", lw=1,
                     label="1 - cosine (jax vs torch)")
        ax2.axhline(1 - criteria["min_cosine"], color="r", ls="--", lw=1,
                    label=f"tolerance {1 - criteria['min_cosine']:g}")
        ax2.set_ylabel("1 - cosine")
        ax2.legend(fontsize=8)
        ax2.grid(True, alpha=0.3)
    bottom = axes[-1][0]
    step = max(1, len(rows) // 40)
    bottom.set_xticks(x[::step])
    bottom.set_xticklabels([r["name"] for r in rows][::step], rotation=90, fontsize=7)
    for row_axes in axes[:-1]:
        row_axes[0].set_xticks(x[::step])
        row_axes[0].set_xticklabels([])
    fig.tight_layout()
    return _png(fig)


def loss_plot(report: dict[str, Any]) -> bytes:
    rows = _section_rows(report, "loss")
    steps = list(range(1, len(rows) + 1))
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(steps, [r["jax"] for r in rows], "o-", label="JAX (optax.adamw)")
    ax.plot(steps, [r["torch"] for r in rows], "x--", label="PyTorch (torch.optim.AdamW)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("training loss, the report's batch at every step")
    ax.legend()
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


# -- files --------------------------------------------------------------------
def _write_atomic(path: str, data: bytes) -> None:
    with atomic_outputs(path, overwrite=True) as (temp,):  # files of the report folder
        temp.write_bytes(data)


def write_report(report: dict[str, Any], out_dir: str) -> list[str]:
    """Render everything in memory first, then write each file atomically; returns the paths."""
    plots = {DEPTH_PLOT: depth_plot(report)}
    if _section_rows(report, "loss"):
        plots[LOSS_PLOT] = loss_plot(report)
    files = {
        "report.json": json.dumps(_json_safe(report), indent=2).encode(),
        "report.md": markdown(report).encode(),
        "report.html": html_page(report, plots).encode(),
        **plots,
    }
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for name, data in files.items():
        path = os.path.join(out_dir, name)
        _write_atomic(path, data)
        paths.append(path)
    return paths
