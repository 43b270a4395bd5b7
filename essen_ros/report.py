"""Evaluation report: ``results.json`` (every number and per-item record), ``summary.md``
(what a person reads first) and PNG plots (accuracy by category, latency histogram, a grid
of example frames with predicted vs true boxes and answers).

Every file is written to a temporary name in the output folder and renamed into place, so
an interrupted run leaves the previous report or the new one, never half of one.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np


def _pct(value) -> str:
    return "n/a" if value is None else f"{100.0 * value:.1f}%"


def _ms(value) -> str:
    return "n/a" if value is None else f"{value:.1f} ms"


def _atomic_write(path: Path, write) -> None:
    """``write(tmp_path)`` then rename onto ``path``."""
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(handle)
    try:
        write(Path(tmp))
        # mkstemp makes the file private; a report is meant to be shared like any output.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)


# ------------------------------------------------------------------------------ text
def _latency_line(results: dict) -> list[str]:
    timing = results.get("timing", {})
    lines = []
    if "end_to_end_latency_ms" in timing:
        e2e = timing["end_to_end_latency_ms"]
        node = timing["node_inference_ms"]
        dropped = timing["dropped"]
        lines.append(f"latency (frame sent -> result received): p50 {_ms(e2e['p50'])}, "
                     f"p95 {_ms(e2e['p95'])}, max {_ms(e2e['max'])}; node inference p50 "
                     f"{_ms(node['p50'])}")
        lines.append(f"frames: {dropped['sent']} sent with a text, {dropped['answered']} answered, "
                     f"{dropped['dropped']} dropped (replay rate x{timing['rate']:g})")
    else:
        model = results["metrics"]["model_latency_ms"]
        image = timing.get("image_encode_ms", {})
        fps = timing.get("frames_per_s")
        fps_text = "n/a" if fps is None else f"{fps:.1f}"
        if "images" in timing:  # a dataset: several items per image, loading included
            speed = (f"{timing['images']} images ({results['counts']['records']} items) in "
                     f"{timing.get('seconds', 0):.1f} s = {fps_text} images/s (loading included)")
        else:
            speed = (f"{timing.get('frames', 0)} frames in {timing.get('seconds', 0):.1f} s = "
                     f"{fps_text} frames/s")
        lines.append(f"speed: {speed}; image encoding p50 "
                     f"{_ms(image.get('p50'))}, grounding p50 {_ms(model['ground']['p50'])}, "
                     f"VQA p50 {_ms(model['vqa']['p50'])} (p95 {_ms(model['ground']['p95'])} / "
                     f"{_ms(model['vqa']['p95'])})")
    return lines


def format_summary(results: dict) -> str:
    """A short plain-text summary for the terminal."""
    m = results["metrics"]
    g, v = m["grounding"], m["vqa"]
    source = results.get("source", {})
    what = source.get("root") or source.get("bag") or "?"
    lines = [f"essen-eval ({source.get('kind', '?')}): {what}",
             f"items scored: {results['counts']['labelled']}"
             + (f" (+{results['counts']['unlabelled']} predictions without ground truth)"
                if results["counts"]["unlabelled"] else "")]
    if g["overall"]["n"]:
        o = g["overall"]
        lines.append(f"grounding ({o['n']}): {_pct(o['acc_iou'])} at IoU>=0.5, "
                     f"{_pct(o['acc_centre'])} by nearest centre; box alone {_pct(o['box_acc_iou'])}"
                     f" / {_pct(o['box_acc_centre'])}")
        for variant, group in g["by_variant"].items():
            lines.append(f"  {variant:<11} ({group['n']}): {_pct(group['acc_iou'])} IoU, "
                         f"{_pct(group['acc_centre'])} centre")
        if g["not_found"]["n"]:
            nm = g["nothing_matches"]
            lines.append(f"  nothing-matches ({g['not_found']['n']}): precision "
                         f"{_pct(nm['precision'])}, recall {_pct(nm['recall'])}")
    if v["overall"]["n"]:
        lines.append(f"VQA ({v['overall']['n']}): {_pct(v['overall']['acc'])}")
        lines.append("  " + ", ".join(f"{kind} {_pct(group['acc'])} ({group['n']})"
                                      for kind, group in v["by_kind"].items()))
    lines += _latency_line(results)
    if results.get("skipped"):
        lines.append("skipped: " + ", ".join(f"{n} {reason}" for reason, n in results["skipped"].items()))
    for warning in results.get("warnings", [])[:5]:
        lines.append(f"warning: {warning}")
    if len(results.get("warnings", [])) > 5:
        lines.append(f"({len(results['warnings']) - 5} more warnings in results.json)")
    return "\n".join(lines)


def format_markdown(results: dict, images: dict[str, str]) -> str:
    m = results["metrics"]
    g, v = m["grounding"], m["vqa"]
    source = results.get("source", {})
    out = ["# ESsEN evaluation", ""]
    out.append(f"- source: **{source.get('kind')}** `{source.get('root') or source.get('bag')}`")
    if source.get("model"):
        out.append(f"- model: `{source['model']}`")
    if source.get("sidecar"):
        out.append(f"- ground truth: `{source['sidecar']}`")
    out.append(f"- items scored: {results['counts']['labelled']}, predictions without ground "
               f"truth: {results['counts']['unlabelled']}")
    out += ["", "## Grounding", ""]
    if g["overall"]["n"]:
        out += ["| group | n | acc IoU>=0.5 | acc nearest centre | box alone IoU | box alone centre | mean IoU |",
                "|---|---|---|---|---|---|---|"]
        rows = [("all", g["overall"])] + list(g["by_variant"].items()) + [("target present", g["found"])]
        for name, group in rows:
            mean_iou = "n/a" if group.get("mean_iou") is None else f"{group['mean_iou']:.3f}"
            out.append(f"| {name} | {group['n']} | {_pct(group['acc_iou'])} | {_pct(group['acc_centre'])} "
                       f"| {_pct(group['box_acc_iou'])} | {_pct(group['box_acc_centre'])} | {mean_iou} |")
        nm = g["nothing_matches"]
        out += ["", f"Expressions that match nothing: {g['not_found']['n']} "
                    f"(correctly answered: {_pct(g['not_found']['acc'])}); \"nothing matches\" "
                    f"precision {_pct(nm['precision'])}, recall {_pct(nm['recall'])} "
                    f"(tp {nm['tp']}, fp {nm['fp']}, fn {nm['fn']})."]
    else:
        out.append("No grounding items.")
    out += ["", "## Question answering", ""]
    if v["overall"]["n"]:
        out += ["| group | n | accuracy |", "|---|---|---|",
                f"| all | {v['overall']['n']} | {_pct(v['overall']['acc'])} |"]
        for kind, group in v["by_kind"].items():
            out.append(f"| kind: {kind} | {group['n']} | {_pct(group['acc'])} |")
        for variant, group in v["by_variant"].items():
            out.append(f"| variant: {variant} | {group['n']} | {_pct(group['acc'])} |")
        out += ["", "Most frequent confusions (true -> predicted):", ""]
        out += [f"- {t} -> {p}: {n}" for t, p, n in _top_confusions(v["confusion"])] or ["- none"]
    else:
        out.append("No VQA items.")
    out += ["", "## Speed", ""] + [f"- {line}" for line in _latency_line(results)]
    if results.get("skipped"):
        out += ["", "## Skipped", ""] + [f"- {n} {reason}" for reason, n in results["skipped"].items()]
    if results.get("warnings"):
        out += ["", "## Warnings", ""] + [f"- {w}" for w in results["warnings"]]
    if images:
        out += ["", "## Plots", ""] + [f"![{name}]({Path(path).name})" for name, path in images.items()]
    return "\n".join(out) + "\n"


def _top_confusions(confusion: dict, k: int = 8) -> list[tuple[str, str, int]]:
    labels, matrix = confusion["labels"], confusion["matrix"]
    pairs = [(labels[i], labels[j], n) for i, row in enumerate(matrix)
             for j, n in enumerate(row) if i != j and n]
    return sorted(pairs, key=lambda x: -x[2])[:k]


# ------------------------------------------------------------------------------ plots
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_accuracy(results: dict, path: Path) -> bool:
    g, v = results["metrics"]["grounding"], results["metrics"]["vqa"]
    bars = []
    if g["overall"]["n"]:
        bars.append(("ground all", g["overall"]["acc_iou"], g["overall"]["acc_centre"]))
        for variant, group in g["by_variant"].items():
            bars.append((f"ground {variant}", group["acc_iou"], group["acc_centre"]))
        if g["not_found"]["n"]:
            bars.append(("ground none", g["not_found"]["acc"], None))
    if v["overall"]["n"]:
        bars.append(("VQA all", v["overall"]["acc"], None))
        for kind, group in v["by_kind"].items():
            bars.append((f"VQA {kind}", group["acc"], None))
    if not bars:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(bars) + 2), 4))
    x = np.arange(len(bars))
    first = [b[1] or 0.0 for b in bars]
    ax.bar(x - 0.2, first, 0.4, label="IoU>=0.5 / accuracy", color="#3b75af")
    centre = [b[2] if b[2] is not None else 0.0 for b in bars]
    if any(b[2] is not None for b in bars):
        ax.bar(x + 0.2, centre, 0.4, label="nearest centre", color="#ef8636")
    for xi, value in zip(x, first):
        ax.text(xi - 0.2, value + 0.01, f"{100 * value:.0f}", ha="center", fontsize=8)
    ax.set_xticks(x, [b[0] for b in bars], rotation=30, ha="right")
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("accuracy")
    ax.set_title("Accuracy by category")
    ax.legend(fontsize=8)
    fig.tight_layout()
    _atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return True


def plot_latency(results: dict, path: Path) -> bool:
    records = results.get("records", [])
    live = any("latency_ms" in r for r in records)
    series = {}
    if live:
        series["end to end"] = [r["latency_ms"] for r in records if r.get("latency_ms") is not None]
        series["node inference"] = [r["ms"] for r in records if r.get("ms") is not None]
    else:
        for task, name in (("ground", "grounding"), ("vqa", "VQA")):
            series[name] = [r["ms"] for r in records if r["task"] == task and r.get("ms") is not None]
    series = {k: v for k, v in series.items() if v}
    if not series:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    top = max(max(v) for v in series.values())
    bins = np.linspace(0, top * 1.05 + 1e-6, 40)
    for name, values in series.items():
        p50, p95 = np.percentile(values, [50, 95])
        ax.hist(values, bins=bins, alpha=0.6, label=f"{name} (p50 {p50:.1f}, p95 {p95:.1f} ms)")
    ax.set_xlabel("milliseconds")
    ax.set_ylabel("count")
    ax.set_title("Latency" + (" (live replay)" if live else " per model call"))
    ax.legend(fontsize=8)
    fig.tight_layout()
    _atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return True


def plot_confusion(results: dict, path: Path) -> bool:
    """VQA answers: true (rows) against predicted (columns), counts in the cells."""
    confusion = results["metrics"]["vqa"]["confusion"]
    labels, matrix = confusion["labels"], np.array(confusion["matrix"])
    if not labels or matrix.sum() == 0:
        return False
    plt = _plt()
    size = max(4.0, 0.32 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (i, j), n in np.ndenumerate(matrix):
        if n:
            ax.text(j, i, str(n), ha="center", va="center", fontsize=6,
                    color="white" if n > matrix.max() / 2 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046)
    ax.set_title("VQA confusion matrix")
    fig.tight_layout()
    _atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return True


def _draw_box(ax, box, color, style):
    from matplotlib.patches import Rectangle

    x0, y0, x1, y1 = box
    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=color,
                           linewidth=2, linestyle=style))


def _shorten(text: str, n: int = 42) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def plot_examples(examples: list, path: Path) -> bool:
    """Grid of frames: true box green (solid), predicted box red (dashed); the command with
    found/score, and the question with predicted vs true answer, under each frame."""
    if not examples:
        return False
    plt = _plt()
    cols = min(4, len(examples))
    rows = math.ceil(len(examples) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (rgb, records) in zip(axes.flat, examples):
        ax.imshow(rgb)
        captions = []
        for r in records:
            if r["task"] == "ground":
                if r.get("true_box"):
                    _draw_box(ax, r["true_box"], "#2ca02c", "-")
                if r.get("pred_box") and r.get("pred_found"):
                    _draw_box(ax, r["pred_box"], "#d62728", "--")
                elif r.get("pred_box"):
                    _draw_box(ax, r["pred_box"], "#d6272880", ":")
                verdict = "found" if r.get("pred_found") else "not found"
                truth = "" if "true_found" not in r else (" (true: absent)" if not r["true_found"] else "")
                captions.append(f"C: {_shorten(r['text'])}\n   {verdict} {r.get('pred_score', 0):.2f}{truth}")
            else:
                mark = ""
                if "true_answer" in r:
                    mark = " ✓" if r.get("pred_answer") == r["true_answer"] else f" ✗ (true {r['true_answer']})"
                captions.append(f"Q: {_shorten(r['text'])}\n   A: {r.get('pred_answer')}{mark}")
        ax.set_title("\n".join(captions), fontsize=7, loc="left")
    fig.suptitle("green: true box   red dashed: predicted (dotted: below threshold)", fontsize=9)
    fig.tight_layout()
    _atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=90))
    plt.close(fig)
    return True


# ------------------------------------------------------------------------------ all
def write_report(results: dict, out_dir: Path | str) -> dict:
    """Write the report into ``out_dir`` (created if needed). Returns {name: path}."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    images = {}
    for name, plot, payload in (("accuracy", plot_accuracy, results),
                                ("confusion", plot_confusion, results),
                                ("latency", plot_latency, results),
                                ("examples", plot_examples, results.get("_examples", []))):
        target = out / f"{name}.png"
        if plot(payload, target):
            images[name] = str(target)
    serialisable = {k: v for k, v in results.items() if not k.startswith("_")}
    serialisable["report_files"] = {k: Path(v).name for k, v in images.items()}
    json_path = out / "results.json"
    _atomic_write(json_path, lambda tmp: tmp.write_text(
        json.dumps(serialisable, indent=1, default=_json_default)))
    md_path = out / "summary.md"
    _atomic_write(md_path, lambda tmp: tmp.write_text(format_markdown(results, images)))
    paths.update(json=str(json_path), summary=str(md_path), **images)
    return paths
