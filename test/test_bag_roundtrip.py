"""essen-bag: a dataset written as a rosbag2 in each encoding reads back to the same pixels,
with the commands/questions scheduled before their frames and a sidecar keyed by stamp."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from eval_support import dataset, dataset_lines, make_dataset, sample_image  # noqa: F401

from essen_ros import bagtool
from essen_ros.data.manifest import read_manifest


def _gray(rgb):
    return np.rint(rgb.astype(np.float64) @ [0.299, 0.587, 0.114]).astype(np.uint8)


def _write(dataset, out, **kw):
    items, _ = read_manifest(dataset)
    return bagtool.write_bag(items, dataset, out, **kw)


def _frames(bag):
    with bagtool.BagSource(bag) as source:
        return [e for e in source.events() if e.role == "image"], source


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgb8-padded", "bgr8-padded", "png"])
def test_lossless_encodings_read_back_to_identical_pixels(dataset, tmp_path, encoding, storage):
    summary = _write(dataset, tmp_path / "bag", encoding=encoding, storage=storage)
    frames, _ = _frames(summary.bag)
    assert len(frames) == summary.frames == 6  # 2 images x max(2 commands, 3 questions)
    for event in frames:
        image_index = (frames.index(event)) // 3
        expected = sample_image(seed=image_index)
        assert np.array_equal(bagtool.message_to_rgb(event.msgtype, event.msg), expected)


def test_mono8_reads_back_to_the_gray_conversion(dataset, tmp_path):
    for encoding in ("mono8", "mono8-padded"):
        summary = _write(dataset, tmp_path / encoding, encoding=encoding)
        frames, _ = _frames(summary.bag)
        rgb = bagtool.message_to_rgb(frames[0].msgtype, frames[0].msg)
        gray = _gray(sample_image(seed=0))
        assert np.array_equal(rgb, np.repeat(gray[:, :, None], 3, axis=2))


def test_jpeg_reads_back_within_compression_tolerance(dataset, tmp_path):
    # JPEG is lossy: pixels are compared with a tolerance, not for equality.
    summary = _write(dataset, tmp_path / "bag", encoding="jpeg", jpeg_quality=95)
    frames, _ = _frames(summary.bag)
    assert frames[0].msg.format == "rgb8; jpeg compressed bgr8"
    rgb = bagtool.message_to_rgb(frames[0].msgtype, frames[0].msg).astype(int)
    error = np.abs(rgb - sample_image(seed=0).astype(int))
    assert error.mean() < 3.0
    # Channels are not swapped: a swap would put the red gradient in blue (error ~100).
    assert np.abs(rgb[..., 0] - sample_image(seed=0)[..., 0]).mean() < 3.0


def test_padded_rows_are_stored_with_a_longer_step(dataset, tmp_path):
    summary = _write(dataset, tmp_path / "bag", encoding="rgb8-padded", row_padding=24)
    frames, _ = _frames(summary.bag)
    msg = frames[0].msg
    assert msg.step == msg.width * 3 + 24
    assert len(msg.data) == msg.step * msg.height


def test_texts_come_just_before_their_frames_and_sidecar_is_keyed_by_stamp(dataset, tmp_path):
    summary = _write(dataset, tmp_path / "bag", fps=4.0)
    with bagtool.BagSource(summary.bag) as source:
        events = list(source.events())
    assert source.command_topic == "/command" and source.question_topic == "/question"
    frames = [e for e in events if e.role == "image"]
    stamps = [bagtool.stamp_ns_of(e.msg) for e in frames]
    assert np.allclose(np.diff(stamps), 0.25e9)
    assert [e.log_ns for e in frames] == stamps  # recorded when stamped
    # The first frame's command and question are recorded before it, within one period.
    first = frames[0]
    before = [e for e in events if e.log_ns < first.log_ns]
    assert {e.role for e in before} == {"command", "question"}
    assert all(first.log_ns - e.log_ns < 0.25e9 for e in before)
    truth = bagtool.read_sidecar(summary.sidecar).truth
    lines = dataset_lines(2)
    assert len(truth) == summary.truth_lines == len(lines)
    # Frame 0 of image 0 carries its first command and first question.
    assert truth[(stamps[0], "the left thing")]["box"] == lines[0]["box"]
    assert truth[(stamps[0], "what color is the cube?")]["answer"] == "red"
    assert truth[(stamps[1], "the purple sphere left of the cube")]["found"] is False


def test_existing_target_is_refused_and_nothing_is_overwritten(dataset, tmp_path):
    target = tmp_path / "bag"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(bagtool.BagError, match="exists already"):
        _write(dataset, target)
    assert (target / "keep.txt").read_text() == "mine"


def test_interrupted_write_leaves_no_bag_and_no_temporary_folder(dataset, tmp_path, monkeypatch):
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    real = bagtool.make_image_message
    monkeypatch.setattr(bagtool, "make_image_message", failing)
    with pytest.raises(KeyboardInterrupt):
        _write(dataset, tmp_path / "bag")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_missing_image_is_skipped_and_counted(tmp_path):
    data = make_dataset(tmp_path / "data")
    (data / "images" / "img1.png").unlink()
    summary = _write(data, tmp_path / "bag")
    assert summary.frames == 3
    assert list(summary.skipped_images) == ["images/img1.png"]


def test_essen_bag_cli_writes_bag_and_refuses_bad_input(dataset, tmp_path):
    out = tmp_path / "bag"
    run = subprocess.run([sys.executable, "-m", "essen_ros.bagtool", "--data", str(dataset),
                          "--out", str(out), "--encoding", "jpeg", "--storage", "mcap", "--fps", "5"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "6 frames" in run.stdout
    assert (out / "truth.jsonl").is_file() and list(out.glob("*.mcap"))
    again = subprocess.run([sys.executable, "-m", "essen_ros.bagtool", "--data", str(dataset),
                            "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "exists already" in again.stderr
    assert "Traceback" not in again.stderr
    missing = subprocess.run([sys.executable, "-m", "essen_ros.bagtool", "--data",
                              str(tmp_path / "nowhere"), "--out", str(tmp_path / "b2")],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    assert "Traceback" not in missing.stderr
    # Sidecar lines are plain JSON with the stamp split as in a ROS header.
    first = json.loads((out / "truth.jsonl").read_text().splitlines()[0])
    assert first["sec"] * 10**9 + first["nanosec"] == first["stamp_ns"]


def _ros1_bag(path, rgb, text):
    from rosbags.rosbag1 import Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS1_NOETIC)
    types = store.types
    writer = Writer(path)
    writer.open()
    image_conn = writer.add_connection("/cam/image", bagtool.IMAGE_TYPE, typestore=store)
    text_conn = writer.add_connection("/robot/command", bagtool.STRING_TYPE, typestore=store)
    writer.write(text_conn, 5, store.serialize_ros1(types[bagtool.STRING_TYPE](data=text),
                                                    bagtool.STRING_TYPE))
    header = types["std_msgs/msg/Header"](
        seq=7, stamp=types["builtin_interfaces/msg/Time"](sec=3, nanosec=5), frame_id="cam")
    image = types[bagtool.IMAGE_TYPE](header=header, height=rgb.shape[0], width=rgb.shape[1],
                                      encoding="rgb8", is_bigendian=0, step=rgb.shape[1] * 3,
                                      data=rgb.reshape(-1))
    writer.write(image_conn, 10, store.serialize_ros1(image, bagtool.IMAGE_TYPE))
    writer.close()
    return path


def test_ros1_bag_is_read_and_rebuilt_as_a_ros2_message_for_live_replay(tmp_path):
    from essen_ros.evaluate import _ros_image
    from essen_ros.ros.image_conversion import image_to_rgb

    rgb = sample_image()
    bag = _ros1_bag(tmp_path / "old.bag", rgb, "the red cube")
    with bagtool.BagSource(bag) as source:
        events = list(source.events())
    assert source.is_ros1 and source.command_topic == "/robot/command"
    assert [e.role for e in events] == ["command", "image"]
    image = events[1]
    assert np.array_equal(bagtool.message_to_rgb(image.msgtype, image.msg), rgb)
    assert bagtool.stamp_ns_of(image.msg) == 3_000_000_005
    ros2 = _ros_image(image)  # what live replay publishes
    assert (ros2.header.stamp.sec, ros2.header.stamp.nanosec, ros2.header.frame_id) == (3, 5, "cam")
    assert np.array_equal(image_to_rgb(ros2), rgb)


def test_sidecar_can_live_outside_the_bag_and_is_found_when_given(dataset, tmp_path):
    sidecar = tmp_path / "truth" / "demo.jsonl"
    summary = _write(dataset, tmp_path / "bag", sidecar=sidecar)
    assert sidecar.is_file() and not (summary.bag / "truth.jsonl").exists()
    assert not list(sidecar.parent.glob(".*partial"))
    assert len(bagtool.read_sidecar(sidecar).truth) == summary.truth_lines == 10
    with pytest.raises(bagtool.BagError, match="sidecar .* exists already"):
        _write(dataset, tmp_path / "bag2", sidecar=sidecar)
    assert not (tmp_path / "bag2").exists()
