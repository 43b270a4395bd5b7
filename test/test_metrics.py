"""Metrics on hand-made predictions whose right answers are worked out by hand."""
from __future__ import annotations

import pytest

from essen_ros import metrics

OBJECTS = [  # three objects side by side, 100 px apart
    {"box": [0, 0, 40, 40], "center": [20, 20]},
    {"box": [100, 0, 140, 40], "center": [120, 20]},
    {"box": [200, 0, 240, 40], "center": [220, 20]},
]


def ground(pred_box, pred_found=True, target=1, variant="template", true_found=True):
    return {"task": "ground", "text": "t", "variant": variant, "true_found": true_found,
            "true_box": OBJECTS[target]["box"] if true_found else None,
            "target": target if true_found else None, "objects": OBJECTS,
            "pred_found": pred_found, "pred_box": pred_box, "pred_score": 0.9, "ms": 1.0}


def vqa(true, pred, text="what color is the cube?", kind=None, variant="template"):
    r = {"task": "vqa", "text": text, "variant": variant, "true_answer": true,
         "pred_answer": pred, "ms": 2.0}
    if kind:
        r["kind"] = kind
    return r


def test_iou_of_known_boxes():
    assert metrics.iou([0, 0, 10, 10], [0, 0, 10, 10]) == 1.0
    assert metrics.iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(50 / 150)
    assert metrics.iou([0, 0, 10, 10], [20, 20, 30, 30]) == 0.0
    assert metrics.iou(None, [0, 0, 1, 1]) == 0.0
    assert metrics.iou([5, 5, 5, 5], [5, 5, 5, 5]) == 0.0  # degenerate, no division by zero


def test_centre_nearest_hit_when_box_is_off_but_nearest_the_target():
    # IoU with the target is low (box shifted 30 px and shrunk), but its centre is nearest
    # to object 1.
    shifted = [125, 10, 145, 30]
    assert metrics.iou(shifted, OBJECTS[1]["box"]) < 0.5
    assert metrics.centre_nearest_hit(shifted, OBJECTS, 1) is True
    assert metrics.centre_nearest_hit([200, 0, 240, 40], OBJECTS, 1) is False
    # Exactly between objects 0 and 1: a tie is a miss.
    assert metrics.centre_nearest_hit([60, 10, 80, 30], OBJECTS, 1) is False
    # No objects to judge by: undefined rather than wrong.
    assert metrics.centre_nearest_hit(shifted, None, 1) is None


def test_centre_falls_back_to_object_box_centres():
    objects = [{"box": o["box"]} for o in OBJECTS]
    assert metrics.centre_nearest_hit([110, 5, 130, 35], objects, 1) is True


def test_grounding_accuracy_by_variant_and_not_found_precision_recall():
    records = [
        ground([100, 0, 140, 40]),                       # exact: right by both criteria
        ground([125, 10, 145, 30]),                      # centre right, IoU wrong
        ground([0, 0, 40, 40]),                          # wrong object
        ground([100, 0, 140, 40], pred_found=False),     # right box, but said "not there"
        ground([100, 0, 140, 40], variant="relational"), # right
        ground(None, pred_found=False, true_found=False),          # correctly nothing
        ground([0, 0, 40, 40], pred_found=True, true_found=False), # hallucinated a match
    ]
    m = metrics.grounding_metrics(records)
    overall = m["overall"]
    assert overall["n"] == 7
    assert overall["acc_iou"] == pytest.approx(3 / 7)      # items 1, 5, 6
    assert overall["acc_centre"] == pytest.approx(4 / 7)   # items 1, 2, 5, 6
    assert overall["box_acc_iou"] == pytest.approx(3 / 5)  # box alone: 1, 4, 5
    assert overall["box_acc_centre"] == pytest.approx(4 / 5)
    assert m["by_variant"]["template"]["n"] == 6
    assert m["by_variant"]["relational"]["acc_iou"] == 1.0
    assert m["found"]["n"] == 5 and m["found"]["acc_iou"] == pytest.approx(2 / 5)
    assert m["not_found"] == {"n": 2, "acc": 0.5}
    # "nothing matches": predicted by items 4 (wrongly) and 6 (rightly); true for 6 and 7.
    nm = m["nothing_matches"]
    assert (nm["tp"], nm["fp"], nm["fn"]) == (1, 1, 1)
    assert nm["precision"] == 0.5 and nm["recall"] == 0.5


def test_precision_undefined_when_nothing_is_predicted_absent():
    m = metrics.grounding_metrics([ground([100, 0, 140, 40])])
    assert m["nothing_matches"]["precision"] is None
    assert m["nothing_matches"]["recall"] is None


@pytest.mark.parametrize("text, answer, kind", [
    ("what color is the cube?", "red", "attribute"),
    ("what size is the metal thing?", "large", "attribute"),
    ("how many spheres are there?", "2", "count"),
    ("what number of cubes are there?", "0", "count"),
    ("is there a red cube?", "no", "exist"),
    ("are there any metal spheres?", "yes", "exist"),
    ("is the cube the same size as the sphere?", "yes", "compare"),
    ("are there more cubes than spheres?", "no", "compare"),
    ("are there an equal number of cubes and spheres?", "yes", "compare"),
    ("is there a cube?", None, "exist"),
    ("what material is it?", None, "attribute"),
])
def test_question_kind_inferred_from_text_and_answer(text, answer, kind):
    assert metrics.infer_question_kind(text, answer) == kind


def test_vqa_accuracy_per_kind_and_confusion_matrix():
    records = [
        vqa("red", "red"),
        vqa("red", "blue"),
        vqa("2", "2", text="how many cubes are there?"),
        vqa("3", "2", text="how many spheres are there?"),
        vqa("yes", "yes", text="is there a cube?"),
        vqa("no", "yes", text="whatever", kind="compare"),  # explicit kind wins
    ]
    m = metrics.vqa_metrics(records)
    assert m["overall"] == {"n": 6, "acc": pytest.approx(3 / 6)}
    assert list(m["by_kind"]) == ["attribute", "count", "exist", "compare"]
    assert m["by_kind"]["attribute"]["acc"] == 0.5
    assert m["by_kind"]["count"]["acc"] == 0.5
    assert m["by_kind"]["exist"]["acc"] == 1.0
    assert m["by_kind"]["compare"]["acc"] == 0.0
    conf = m["confusion"]
    labels = conf["labels"]
    cell = lambda t, p: conf["matrix"][labels.index(t)][labels.index(p)]  # noqa: E731
    assert cell("red", "blue") == 1 and cell("red", "red") == 1
    assert cell("3", "2") == 1 and cell("no", "yes") == 1
    assert sum(map(sum, conf["matrix"])) == 6
    # Labels follow the given vocabulary order first.
    ordered = metrics.vqa_metrics(records, labels=["yes", "no", "red"])["confusion"]["labels"]
    assert ordered[:3] == ["yes", "no", "red"]


def test_latency_percentiles_match_numpy_definition():
    stats = metrics.latency_stats([10, 20, 30, 40, None, 1000])
    assert stats["n"] == 5
    assert stats["p50"] == 30
    assert stats["p95"] == pytest.approx(40 + 0.8 * 960)
    assert stats["max"] == 1000
    assert metrics.latency_stats([])["p50"] is None


def test_dropped_frames_and_fps():
    d = metrics.dropped_frames([1, 2, 3, 4], [2, 4, 99])  # 99 was never sent: ignored
    assert d == {"sent": 4, "answered": 2, "dropped": 2, "drop_rate": 0.5}
    assert metrics.frames_per_second(30, 2.0) == 15.0
    assert metrics.frames_per_second(3, 0.0) is None


def test_not_found_without_box_is_wrong_but_box_alone_is_not_judged():
    # Live results carry no box when the node found nothing.
    records = [ground(None, pred_found=False), ground([100, 0, 140, 40])]
    m = metrics.grounding_metrics(records)["overall"]
    assert m["acc_iou"] == 0.5 and m["acc_centre"] == 0.5
    assert m["box_acc_iou"] == 1.0  # only the record with a box is judged on its box
