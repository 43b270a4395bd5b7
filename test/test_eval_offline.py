"""essen-eval on datasets and on bags offline: known predictions give known numbers, a bag
of a dataset scores like the dataset itself, and the report is complete."""
from __future__ import annotations

import json

import pytest
from eval_support import FakePredictor, dataset  # noqa: F401
from PIL import Image as PILImage

from essen_ros import bagtool, evaluate
from essen_ros.data.manifest import read_manifest
from essen_ros.model.checkpoint import load_model
from essen_ros.model.predictor import Predictor


def test_known_predictions_give_known_metrics_and_each_image_and_text_is_encoded_once(dataset):
    items, _ = read_manifest(dataset)
    fake = FakePredictor()
    results = evaluate.evaluate_manifest(fake, items, dataset)
    m = results["metrics"]
    # Per image: "the left thing" right, the not-found expression wrongly found.
    assert m["grounding"]["overall"]["n"] == 4
    assert m["grounding"]["overall"]["acc_iou"] == 0.5
    assert m["grounding"]["by_variant"]["template"]["acc_iou"] == 1.0
    assert m["grounding"]["by_variant"]["relational"]["acc_iou"] == 0.0
    nm = m["grounding"]["nothing_matches"]
    assert (nm["tp"], nm["fp"], nm["fn"]) == (0, 0, 2) and nm["recall"] == 0.0
    # Always "red": right for the colour question only.
    assert m["vqa"]["overall"]["acc"] == pytest.approx(1 / 3)
    assert {k: g["acc"] for k, g in m["vqa"]["by_kind"].items()} == {
        "attribute": 1.0, "count": 0.0, "exist": 0.0}
    assert fake.image_encodings == 2
    assert sorted(fake.text_encodings) == sorted(set(fake.text_encodings))  # once per text
    assert len(fake.text_encodings) == 5
    assert results["timing"]["images"] == 2 and results["timing"]["frames_per_s"] > 0


def test_limit_and_unloadable_images_are_respected(dataset):
    items, _ = read_manifest(dataset)
    (dataset / "images" / "img1.png").write_bytes(b"not a png")
    results = evaluate.evaluate_manifest(FakePredictor(), items, dataset)
    assert results["counts"]["records"] == 5
    assert results["skipped"] == {"image failed to load": 5}
    limited = evaluate.evaluate_manifest(FakePredictor(), items, dataset, limit=3)
    assert limited["counts"]["records"] == 3


def test_bag_of_a_dataset_scores_like_the_dataset(dataset, tmp_path, tiny_checkpoint):
    predictor = Predictor(load_model(tiny_checkpoint), threshold=0.0)  # every box is judged
    items, _ = read_manifest(dataset)
    on_data = evaluate.evaluate_manifest(predictor, items, dataset)
    bag = bagtool.write_bag(items, dataset, tmp_path / "bag", encoding="bgr8-padded").bag
    on_bag = evaluate.evaluate_bag(predictor, bag)
    assert on_bag["counts"]["labelled"] == on_data["counts"]["records"] == 10
    # Frames where only a question is new still ground the previous command: predictions
    # without ground truth, reported apart.
    assert on_bag["counts"]["unlabelled"] == 2
    key = lambda r: (r["image"], r["text"])  # noqa: E731
    offline = {key(r): r for r in on_data["records"]}
    labelled = [r for r in on_bag["records"] if r["labelled"]]
    for record in labelled:
        twin = offline[key(record)]
        for field in ("pred_found", "pred_box", "pred_answer", "true_box", "true_answer"):
            assert record.get(field) == twin.get(field), field
    for section in ("grounding", "vqa"):
        assert on_bag["metrics"][section] == on_data["metrics"][section]


def test_report_files_are_complete_and_readable(dataset, tmp_path):
    items, _ = read_manifest(dataset)
    results = evaluate.evaluate_manifest(FakePredictor(), items, dataset)
    paths = evaluate.write_report(results, tmp_path / "report")
    saved = json.loads(open(paths["json"]).read())
    assert len(saved["records"]) == 10 and "_examples" not in saved
    assert saved["records"][0]["pred_box"] and "true_box" in saved["records"][0]
    assert saved["metrics"]["vqa"]["confusion"]["labels"][0] == "red"
    summary = open(paths["summary"]).read()
    assert "| template | 2 | 100.0%" in summary and "![examples](examples.png)" in summary
    for name in ("accuracy", "confusion", "latency", "examples"):
        with PILImage.open(paths[name]) as picture:
            assert picture.format == "PNG" and picture.size[0] > 300
    assert not [p for p in (tmp_path / "report").iterdir() if p.name.startswith(".")]


def test_essen_eval_runs_on_clevr_dev(clevr_dev, tmp_path, tiny_checkpoint, capsys):
    out = tmp_path / "report"
    code = evaluate.main(["--data", str(clevr_dev), "--model", str(tiny_checkpoint),
                          "--out", str(out), "--limit", "60", "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "grounding (" in printed and "VQA (" in printed and "images/s" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["counts"]["records"] == 60
    assert results["metrics"]["grounding"]["overall"]["n"] + results["metrics"]["vqa"]["overall"]["n"] == 60
    assert {"accuracy.png", "latency.png", "examples.png", "summary.md"} <= {p.name for p in out.iterdir()}
