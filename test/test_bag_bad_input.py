"""Bad bags and bad ground truth: clear messages that say what to pass, damaged files read up
to where they break, bad messages and images skipped and counted, never a traceback."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from eval_support import FakePredictor, dataset, make_dataset, sample_image  # noqa: F401

from essen_ros import bagtool, evaluate
from essen_ros.data.manifest import read_manifest


def _bag(dataset, out, **kw):
    items, _ = read_manifest(dataset)
    return bagtool.write_bag(items, dataset, out, **kw).bag


def _raw_bag(path, messages, storage="sqlite3"):
    """A bag from (topic, msgtype, log_ns, payload) where payload is a rosbags message or
    raw bytes (garbage)."""
    from rosbags.rosbag2 import Writer
    from rosbags.rosbag2.enums import StoragePlugin

    store = bagtool._typestore()
    writer = Writer(path, version=9, storage_plugin=StoragePlugin[storage.upper()])
    writer.open()
    connections = {}
    for topic, msgtype, log_ns, payload in messages:
        if topic not in connections:
            if msgtype in store.types:
                connections[topic] = writer.add_connection(topic, msgtype, typestore=store)
            else:  # a type this reader has never heard of
                connections[topic] = writer.add_connection(topic, msgtype, msgdef="int32 x",
                                                           rihs01="RIHS01_" + "0" * 64)
        data = payload if isinstance(payload, bytes) else store.serialize_cdr(payload, msgtype)
        writer.write(connections[topic], log_ns, data)
    writer.close()
    return path


def _image(stamp_ns, rgb=None, **override):
    store = bagtool._typestore()
    msgtype, msg = bagtool.make_image_message(store, sample_image() if rgb is None else rgb,
                                              "rgb8", stamp_ns)
    for key, value in override.items():
        setattr(msg, key, value)
    return msg


def _string(text):
    return bagtool._typestore().types[bagtool.STRING_TYPE](data=text)


def _eval_cli(*args, timeout=180):
    """essen-eval as a user runs it: a separate process."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "essen_ros.evaluate", "--no-progress", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=env)


def _eval_main(capsys, *args):
    """essen-eval's main() in this process (no interpreter and torch start-up per call)."""
    code = evaluate.main(["--no-progress", *map(str, args)])
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, captured.out, captured.err)


def test_bag_without_text_topics_lists_topics_and_the_flags_to_pass(tmp_path):
    bag = _raw_bag(tmp_path / "bag", [("/cam/rgb", bagtool.IMAGE_TYPE, 10**9, _image(10**9)),
                                      ("/speech", bagtool.STRING_TYPE, 10**9 - 1, _string("hi"))])
    with pytest.raises(bagtool.BagError) as error:
        evaluate.evaluate_bag(FakePredictor(), bag)
    message = str(error.value)
    assert "/cam/rgb" in message and "/speech" in message
    assert "--command-topic" in message and "--command TEXT" in message
    # Said before any model is loaded (the model path here does not even exist).
    run = _eval_cli("--bag", bag, "--model", tmp_path / "no_model", "--out", tmp_path / "out")
    assert run.returncode == 2 and "/speech" in run.stderr and "Traceback" not in run.stderr
    # The advice works: a fixed command (or naming the topic) evaluates the bag.
    fixed = evaluate.evaluate_bag(FakePredictor(), bag, command="the left thing")
    assert fixed["counts"]["records"] == 1
    named = evaluate.evaluate_bag(FakePredictor(), bag, command_topic="/speech")
    assert named["records"][0]["text"] == "hi"


def test_several_or_missing_image_topics_name_the_flag(tmp_path):
    bag = _raw_bag(tmp_path / "bag", [("/a/image", bagtool.IMAGE_TYPE, 1, _image(1)),
                                      ("/b/image", bagtool.IMAGE_TYPE, 2, _image(2)),
                                      ("/command", bagtool.STRING_TYPE, 0, _string("x"))])
    with pytest.raises(bagtool.BagError, match=r"several image topics: /a/image, /b/image.*--image-topic"):
        bagtool.BagSource(bag)
    with pytest.raises(bagtool.BagError, match=r"'/c/image' is not in bag(.|\n)*/a/image(.|\n)*--image-topic"):
        bagtool.BagSource(bag, image_topic="/c/image")
    with pytest.raises(bagtool.BagError, match="carries std_msgs/msg/String, not an image"):
        bagtool.BagSource(bag, image_topic="/command")
    assert bagtool.BagSource(bag, image_topic="/b/image").image_topic == "/b/image"


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_truncated_bag_is_evaluated_up_to_where_it_breaks(tmp_path, storage):
    data = make_dataset(tmp_path / "data", n_images=6)
    bag = _bag(data, tmp_path / "bag", storage=storage)
    full = evaluate.evaluate_bag(FakePredictor(), bag)
    storage_file = next(p for p in bag.iterdir() if p.suffix in (".db3", ".mcap"))
    with storage_file.open("r+b") as handle:
        handle.truncate(storage_file.stat().st_size // 2)
    cut = evaluate.evaluate_bag(FakePredictor(), bag)
    assert 0 < cut["timing"]["frames"] < full["timing"]["frames"] == 18
    stopped = cut["source"]["read"]["stopped"]
    assert stopped and "reading stopped after" in stopped and "s into the recording" in stopped
    assert any("reading stopped" in w for w in cut["warnings"])
    # What was read is scored like the same frames of the intact bag.
    n = len(cut["records"])
    strip = lambda records: [(r["stamp_ns"], r["text"], r.get("pred_answer")) for r in records]  # noqa: E731
    assert strip(cut["records"]) == strip(full["records"][:n])


def test_bag_without_metadata_is_salvaged_completely(tmp_path, dataset):
    bag = _bag(dataset, tmp_path / "bag", storage="mcap")
    (bag / "metadata.yaml").unlink()
    results = evaluate.evaluate_bag(FakePredictor(), bag)
    assert results["timing"]["frames"] == 6
    assert results["source"]["read"]["salvaged"].startswith("bag index unreadable")
    assert results["source"]["read"]["stopped"] is None


def test_unknown_types_and_undecodable_messages_are_skipped_and_counted(tmp_path):
    bag = _raw_bag(tmp_path / "bag", [
        ("/command", bagtool.STRING_TYPE, 5, _string("the left thing")),
        ("/telemetry", "my_robot_msgs/msg/Thing", 6, b"\x00\x01\x00\x00\x07\x00\x00\x00"),
        ("/camera/image_raw", bagtool.IMAGE_TYPE, 10, _image(10)),
        ("/camera/image_raw", bagtool.IMAGE_TYPE, 20, b"\x00\x01\x00\x00garbage"),
        ("/camera/image_raw", bagtool.IMAGE_TYPE, 30, _image(30, step=10)),  # step too small
        ("/camera/image_raw", bagtool.IMAGE_TYPE, 40, _image(40)),
    ])
    results = evaluate.evaluate_bag(FakePredictor(), bag)
    assert [r["stamp_ns"] for r in results["records"]] == [10, 40]
    assert results["skipped"] == {"image failed to decode": 1,
                                  f"undecodable {bagtool.IMAGE_TYPE} message": 1}
    assert "/telemetry" in results["source"]["read"]["ignored_topics"]
    assert any("step is 10" in w for w in results["warnings"])


def test_corrupt_compressed_image_is_skipped(tmp_path):
    store = bagtool._typestore()
    good_type, good = bagtool.make_image_message(store, sample_image(), "png", 10)
    bad = store.types[bagtool.COMPRESSED_TYPE](header=good.header, format="png",
                                               data=np.frombuffer(b"\x89PNG\r\n\x1a\nnope", np.uint8))
    bag = _raw_bag(tmp_path / "bag", [("/question", bagtool.STRING_TYPE, 1, _string("what?")),
                                      ("/img/compressed", good_type, 10, good),
                                      ("/img/compressed", good_type, 20, bad)])
    results = evaluate.evaluate_bag(FakePredictor(), bag)
    assert len(results["records"]) == 1
    assert results["skipped"] == {"image failed to decode": 1}


def test_sidecar_stamps_matching_no_frame_give_a_warning_with_counts(tmp_path, dataset):
    bag = _bag(dataset, tmp_path / "bag")
    lines = (bag / "truth.jsonl").read_text().splitlines()
    shifted = tmp_path / "other.jsonl"
    with shifted.open("w") as handle:
        for i, line in enumerate(lines):
            entry = json.loads(line)
            if i < 4:  # the first four entries point 1 s later than any frame
                entry["stamp_ns"] += 10**9 * 100
            handle.write(json.dumps(entry) + "\n")
        handle.write("{not json\n")
    results = evaluate.evaluate_bag(FakePredictor(), bag, sidecar=shifted)
    warning = next(w for w in results["warnings"] if "matches no frame" in w)
    assert f"4 of {len(lines)} entries" in warning
    assert any("1 malformed lines skipped" in w for w in results["warnings"])
    assert results["counts"]["labelled"] == len(lines) - 4


def test_bag_without_sidecar_reports_predictions_and_timing_only(tmp_path, dataset):
    bag = _bag(dataset, tmp_path / "bag")
    (bag / "truth.jsonl").unlink()
    results = evaluate.evaluate_bag(FakePredictor(), bag)
    assert results["counts"]["labelled"] == 0 and results["counts"]["unlabelled"] == 12
    assert results["timing"]["frames_per_s"] > 0
    assert any("no sidecar" in w for w in results["warnings"])
    paths = evaluate.write_report(results, tmp_path / "out")
    assert json.loads(open(paths["json"]).read())["metrics"]["grounding"]["overall"]["n"] == 0


def test_manifest_lines_with_missing_fields_are_skipped_and_counted(tmp_path, tiny_checkpoint, capsys):
    data = make_dataset(tmp_path / "data", extra_lines=[
        json.dumps({"image": "images/img0.png", "task": "vqa", "text": "what?"}),  # no answer
        json.dumps({"image": "images/img0.png", "task": "ground", "text": "x"}),   # no box
        "{broken",
    ])
    out = tmp_path / "out"
    run = _eval_main(capsys, "--data", data, "--model", tiny_checkpoint, "--out", out)
    assert run.returncode == 0, run.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["counts"]["records"] == 10
    assert sum(n for k, n in results["skipped"].items() if k.startswith("manifest line")) == 3
    assert "skipped" in run.stdout


def test_user_errors_exit_2_without_traceback(tmp_path, tiny_checkpoint, dataset, capsys):
    cases = [
        ("--data", tmp_path / "missing", "--model", tiny_checkpoint),
        ("--data", dataset, "--model", tmp_path / "no_model"),
        ("--bag", dataset, "--model", tiny_checkpoint),  # a folder that is not a bag
        ("--data", dataset, "--model", tiny_checkpoint, "--out", dataset / "annotations.jsonl"),
    ]
    for args in cases:
        if "--out" not in args:
            args = (*args, "--out", tmp_path / "out")
        run = _eval_main(capsys, *args)
        assert run.returncode == 2, (args, run.stderr)
        assert run.stderr.startswith("essen-eval: error:"), run.stderr
    # And as a separate process: a message, no traceback.
    run = _eval_cli("--bag", tmp_path / "missing", "--out", tmp_path / "out")
    assert run.returncode == 2 and "does not exist" in run.stderr and "Traceback" not in run.stderr


def test_pointing_at_the_storage_file_evaluates_its_bag_folder(tmp_path, dataset):
    bag = _bag(dataset, tmp_path / "bag")
    storage_file = next(bag.glob("*.db3"))
    results = evaluate.evaluate_bag(FakePredictor(), storage_file)
    assert results["source"]["bag"] == str(bag)
    assert results["counts"]["labelled"] == 10 and not results["source"]["read"]["salvaged"]


def test_limit_reads_the_first_frames_without_warning_about_the_rest(tmp_path, dataset):
    bag = _bag(dataset, tmp_path / "bag")
    results = evaluate.evaluate_bag(FakePredictor(), bag, limit=2)
    assert results["timing"]["frames"] == 2 and results["counts"]["labelled"] == 4
    assert not [w for w in results["warnings"] if "sidecar" in w]
