"""Evaluation metrics on per-item prediction records (pure functions, no model, no ROS).

A record is a plain dict, the same one the JSON report stores per item:

grounding (``task == "ground"``)::

    {"task": "ground", "text": ..., "variant": "template",
     "true_found": True, "true_box": [x0, y0, x1, y1] | None, "target": 2 | None,
     "objects": [{"box": [...], "center": [u, v]}, ...],
     "pred_found": True, "pred_score": 0.83, "pred_box": [x0, y0, x1, y1] | None,
     "ms": 4.1}

question answering (``task == "vqa"``)::

    {"task": "vqa", "text": ..., "variant": ..., "kind": "count",
     "true_answer": "2", "pred_answer": "3", "pred_score": 0.4, "ms": 3.0}

A grounding item is *correct* when the prediction agrees on "is it there" and, when it is
there, on where: ``pred_found`` and the box criterion for items whose target exists,
``not pred_found`` for expressions that match nothing. The ``box_*`` numbers judge the box
alone (found items only, ignoring the found flag), so a miscalibrated threshold does not hide
how well the model localises.
"""
from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence

IOU_THRESHOLD = 0.5
VQA_KINDS = ("attribute", "count", "exist", "compare")

# Words that make a yes/no question a comparison rather than an existence question
# ("is the cube the same size as ...", "are there more spheres than cubes").
_COMPARE_WORDS = ("same", "equal", "more", "fewer", "less", "greater", "than", "as many")
_YES_NO_STARTS = ("is ", "are ", "does ", "do ", "was ", "were ")


# ---------------------------------------------------------------------------- geometry
def iou(box_a: Sequence[float] | None, box_b: Sequence[float] | None) -> float:
    """Intersection over union of two ``[x0, y0, x1, y1]`` boxes; 0 when either is missing
    or degenerate."""
    if box_a is None or box_b is None:
        return 0.0
    ax0, ay0, ax1, ay1 = (float(v) for v in box_a)
    bx0, by0, bx1, by1 = (float(v) for v in box_b)
    inter_w = max(0.0, min(ax1, bx1) - max(ax0, bx0))
    inter_h = max(0.0, min(ay1, by1) - max(ay0, by0))
    inter = inter_w * inter_h
    union = max(0.0, ax1 - ax0) * max(0.0, ay1 - ay0) + max(0.0, bx1 - bx0) * max(0.0, by1 - by0) - inter
    return inter / union if union > 0 else 0.0


def box_center(box: Sequence[float]) -> tuple[float, float]:
    return ((float(box[0]) + float(box[2])) / 2.0, (float(box[1]) + float(box[3])) / 2.0)


def object_centers(objects: Sequence[dict] | None) -> list[tuple[float, float]] | None:
    """Centre of every object: its ``center`` field, else the centre of its ``box``.
    None when any object has neither (the centre criterion is then undefined)."""
    if not objects:
        return None
    centers = []
    for obj in objects:
        if obj.get("center") is not None:
            centers.append((float(obj["center"][0]), float(obj["center"][1])))
        elif obj.get("box") is not None:
            centers.append(box_center(obj["box"]))
        else:
            return None
    return centers


def centre_nearest_hit(pred_box: Sequence[float] | None, objects: Sequence[dict] | None,
                       target: int | None) -> bool | None:
    """True when the predicted box centre is nearer to the target's centre than to any other
    object's (clevr-dev's second criterion, robust to boxes a few pixels off). None when the
    item carries no objects/target to judge by; ties count as a miss."""
    centers = object_centers(objects)
    if centers is None or target is None or not 0 <= int(target) < len(centers):
        return None
    if pred_box is None:
        return False
    px, py = box_center(pred_box)
    distances = [math.hypot(px - cx, py - cy) for cx, cy in centers]
    target_distance = distances[int(target)]
    return all(target_distance < d for i, d in enumerate(distances) if i != int(target))


# ---------------------------------------------------------------------------- grounding
def score_grounding_item(record: dict, iou_threshold: float = IOU_THRESHOLD) -> dict:
    """Per-item verdicts: ``iou``, ``correct_iou``, ``correct_centre`` (None when undefined),
    ``box_hit_iou``/``box_hit_centre`` (box alone, found items only)."""
    true_found = bool(record.get("true_found", True))
    pred_found = bool(record.get("pred_found"))
    pred_box = record.get("pred_box")
    if not true_found:
        correct = not pred_found
        return {"iou": None, "correct_iou": correct, "correct_centre": correct,
                "box_hit_iou": None, "box_hit_centre": None}
    if pred_box is None and not pred_found:
        # Live results carry no box when nothing was found: the box alone cannot be judged.
        centre_defined = centre_nearest_hit(None, record.get("objects"), record.get("target")) is not None
        return {"iou": None, "correct_iou": False,
                "correct_centre": False if centre_defined else None,
                "box_hit_iou": None, "box_hit_centre": None}
    overlap = iou(pred_box, record.get("true_box"))
    box_hit_iou = overlap >= iou_threshold
    box_hit_centre = centre_nearest_hit(pred_box, record.get("objects"), record.get("target"))
    return {
        "iou": overlap,
        "correct_iou": pred_found and box_hit_iou,
        "correct_centre": None if box_hit_centre is None else (pred_found and box_hit_centre),
        "box_hit_iou": box_hit_iou,
        "box_hit_centre": box_hit_centre,
    }


def _rate(flags: Iterable[bool | None]) -> float | None:
    """Fraction of True among the defined flags; None when none is defined."""
    defined = [bool(f) for f in flags if f is not None]
    return sum(defined) / len(defined) if defined else None


def _grounding_group(scored: list[tuple[dict, dict]]) -> dict:
    found_items = [(r, s) for r, s in scored if r.get("true_found", True)]
    return {
        "n": len(scored),
        "acc_iou": _rate(s["correct_iou"] for _, s in scored),
        "acc_centre": _rate(s["correct_centre"] for _, s in scored),
        "n_found": len(found_items),
        "box_acc_iou": _rate(s["box_hit_iou"] for _, s in found_items),
        "box_acc_centre": _rate(s["box_hit_centre"] for _, s in found_items),
        "mean_iou": _mean([s["iou"] for _, s in found_items]),
    }


def precision_recall(tp: int, fp: int, fn: int) -> dict:
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = (2 * precision * recall / (precision + recall)
          if precision is not None and recall is not None and precision + recall > 0 else None)
    return {"tp": tp, "fp": fp, "fn": fn, "precision": precision, "recall": recall, "f1": f1}


def grounding_metrics(records: Sequence[dict], iou_threshold: float = IOU_THRESHOLD) -> dict:
    """Overall, by variant, and by found / not-found; "nothing matches" is scored as a
    detection problem of its own (positive = the expression matches nothing)."""
    records = [r for r in records if r.get("task") == "ground"]
    scored = [(r, score_grounding_item(r, iou_threshold)) for r in records]
    by_variant: dict[str, list] = defaultdict(list)
    for r, s in scored:
        by_variant[r.get("variant") or "unknown"].append((r, s))
    found = [(r, s) for r, s in scored if r.get("true_found", True)]
    not_found = [(r, s) for r, s in scored if not r.get("true_found", True)]
    tp = sum(1 for r, _ in not_found if not r.get("pred_found"))
    fn = len(not_found) - tp
    fp = sum(1 for r, _ in found if not r.get("pred_found"))
    return {
        "iou_threshold": iou_threshold,
        "overall": _grounding_group(scored),
        "by_variant": {k: _grounding_group(v) for k, v in sorted(by_variant.items())},
        "found": _grounding_group(found),
        "not_found": {"n": len(not_found), "acc": _rate(s["correct_iou"] for _, s in not_found)},
        "nothing_matches": precision_recall(tp, fp, fn),
    }


# ---------------------------------------------------------------------------- VQA
def infer_question_kind(text: str, answer: str | None = None) -> str:
    """attribute / count / exist / compare from the question (and the true answer when
    known): used when a manifest line carries no ``kind``."""
    t = " ".join(str(text).lower().split())
    if t.startswith("how many") or ("number of" in t and not t.startswith(("is ", "are "))):
        return "count"
    if answer is not None and str(answer).isdigit():
        return "count"
    # Without a known answer, a question starting like "is there ..." is taken as yes/no.
    yes_no = answer in ("yes", "no") if answer is not None else t.startswith(_YES_NO_STARTS)
    if yes_no:
        return "compare" if any(word in t for word in _COMPARE_WORDS) else "exist"
    return "attribute"


def _vqa_group(records: list[dict]) -> dict:
    correct = [r.get("pred_answer") == r.get("true_answer") for r in records]
    return {"n": len(records), "acc": _rate(correct)}


def confusion_matrix(records: Sequence[dict], labels: Sequence[str] | None = None) -> dict:
    """Rows: true answer, columns: predicted answer. Labels default to every answer seen
    (true or predicted), in the order given by ``labels`` first."""
    seen = Counter()
    for r in records:
        seen[str(r.get("true_answer"))] += 1
        seen[str(r.get("pred_answer"))] += 1
    ordered = [a for a in (labels or []) if a in seen]
    ordered += sorted(a for a in seen if a not in ordered)
    index = {a: i for i, a in enumerate(ordered)}
    matrix = [[0] * len(ordered) for _ in ordered]
    for r in records:
        matrix[index[str(r.get("true_answer"))]][index[str(r.get("pred_answer"))]] += 1
    return {"labels": ordered, "matrix": matrix}


def vqa_metrics(records: Sequence[dict], labels: Sequence[str] | None = None) -> dict:
    records = [r for r in records if r.get("task") == "vqa"]
    by_kind: dict[str, list] = defaultdict(list)
    by_variant: dict[str, list] = defaultdict(list)
    for r in records:
        kind = r.get("kind") or infer_question_kind(r.get("text", ""), r.get("true_answer"))
        by_kind[kind].append(r)
        by_variant[r.get("variant") or "unknown"].append(r)
    kinds = [k for k in VQA_KINDS if k in by_kind] + sorted(k for k in by_kind if k not in VQA_KINDS)
    return {
        "overall": _vqa_group(list(records)),
        "by_kind": {k: _vqa_group(by_kind[k]) for k in kinds},
        "by_variant": {k: _vqa_group(v) for k, v in sorted(by_variant.items())},
        "confusion": confusion_matrix(records, labels),
        "confusion_by_kind": {k: confusion_matrix(by_kind[k], labels) for k in kinds},
    }


# ---------------------------------------------------------------------------- timing
def _mean(values: Sequence[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default), q in [0, 100]."""
    data = sorted(float(v) for v in values)
    if not data:
        return None
    pos = (len(data) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def latency_stats(ms: Sequence[float | None]) -> dict:
    values = [float(v) for v in ms if v is not None]
    return {"n": len(values), "p50": percentile(values, 50), "p95": percentile(values, 95),
            "max": max(values) if values else None, "mean": _mean(values)}


def dropped_frames(sent_stamps: Iterable, answered_stamps: Iterable) -> dict:
    """Frames sent to a live node that never got a result back."""
    sent = set(sent_stamps)
    answered = set(answered_stamps) & sent
    n_dropped = len(sent) - len(answered)
    return {"sent": len(sent), "answered": len(answered), "dropped": n_dropped,
            "drop_rate": n_dropped / len(sent) if sent else None}


def frames_per_second(n_frames: int, seconds: float) -> float | None:
    return n_frames / seconds if seconds > 0 else None


def summarize(records: Sequence[dict], answer_labels: Sequence[str] | None = None) -> dict:
    """Grounding and VQA metrics plus per-item model latency for a list of records."""
    records = list(records)
    return {
        "n_items": len(records),
        "grounding": grounding_metrics(records),
        "vqa": vqa_metrics(records, answer_labels),
        "model_latency_ms": {
            "ground": latency_stats([r.get("ms") for r in records if r.get("task") == "ground"]),
            "vqa": latency_stats([r.get("ms") for r in records if r.get("task") == "vqa"]),
        },
    }
