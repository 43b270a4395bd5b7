"""The simulated camera and the scorer's bookkeeping, without ROS processes: camera model,
ground truth through the messages and back, labels recomputed for each frame's view, stamp
matching, dropped frames and the report files."""
from __future__ import annotations

import json

import numpy as np
import pytest

from essen_ros import metrics
from essen_ros.data.language import execute
from essen_ros.data.scene import Camera, SceneObject, orbit_camera, relations
from essen_ros.ros import scorer as sc
from essen_ros.ros.sim import (CameraPath, SimulatedWorld, camera_info_msg, camera_pose_msg,
                               scene_truth_msg)


@pytest.fixture(scope="module")
def world():
    w = SimulatedWorld(160, 120, seed=3, min_objects=4, max_objects=5, orbit_speed=3.0,
                       orbit_range=20.0, shake=0.1)
    yield w
    w.close()


@pytest.fixture(scope="module")
def frames(world):
    return [world.render(i, rate=5.0) for i in range(3)]


def test_camera_info_k_projects_object_centres_where_the_renderer_draws_them(frames):
    frame = frames[0]
    camera = frame.render.camera
    info = camera_info_msg(160, 120, camera.fovy)
    fx, cx, fy, cy = info.k[0], info.k[2], info.k[4], info.k[5]
    right, up, forward = camera.axes()
    for obj, centre in zip(frame.scene.objects, frame.render.centers):
        rel = np.subtract(obj.position, camera.position)
        x, y, z = rel @ right, -(rel @ up), rel @ forward   # optical frame: y down, z forward
        assert fx * x / z + cx == pytest.approx(centre[0], abs=0.06)
        assert fy * y / z + cy == pytest.approx(centre[1], abs=0.06)
    assert info.p[0] == fx and info.p[10] == 1.0 and list(info.d) == [0.0] * 5


def test_ground_truth_round_trips_through_the_messages_with_relations_for_that_camera(frames):
    for frame in frames:
        truth_msg, pose_msg = scene_truth_msg(frame), camera_pose_msg(frame.render.camera)
        truth_msg.header.stamp.sec, truth_msg.header.stamp.nanosec = 7, 250
        truth = sc.truth_frame(truth_msg, pose_msg)
        assert truth.stamp_ns == 7_000_000_250 and truth.scene_id == frame.scene_id
        assert truth.boxes == frame.render.boxes
        assert truth.visible == frame.render.visible
        assert truth.relations == relations(frame.scene.objects, frame.render.camera)
        for got, want in zip(truth.objects, frame.scene.objects):
            assert got.attributes() == want.attributes()
            assert got.position == pytest.approx(want.position)
        # Positions on the topic are metres on a tabletop, not CLEVR units.
        assert max(abs(o.position.x) for o in truth_msg.objects) < 0.5


def test_same_seed_same_frames_and_the_camera_moves_slowly(world, frames):
    again = SimulatedWorld(160, 120, seed=3, min_objects=4, max_objects=5, orbit_speed=3.0,
                           orbit_range=20.0, shake=0.1)
    try:
        repeat = [again.render(i, rate=5.0) for i in range(3)]
    finally:
        again.close()
    for a, b in zip(frames, repeat):
        assert np.array_equal(a.render.rgb, b.render.rgb)
    # Consecutive frames: the view changes, but only a little (a camera on a moving robot).
    a, b = frames[0].render, frames[1].render
    assert a.camera.position != b.camera.position
    assert np.mean(np.abs(a.rgb.astype(int) - b.rgb.astype(int))) < 8
    assert sum(box is not None for box in a.boxes) >= 3


def test_camera_path_swings_within_its_range_at_its_speed():
    start = orbit_camera(30.0, 30.0, 11.0, (0.2, -0.1, 0.0), 40.0)
    path = CameraPath(start, orbit_speed_deg=2.0, orbit_range_deg=20.0, shake_deg=0.0)
    rng = np.random.default_rng(0)
    azimuths = []
    for t in np.arange(0.0, 200.0, 0.5):
        cam = path.camera_at(float(t), rng)
        offset = np.subtract(cam.position, cam.lookat)
        azimuths.append(np.degrees(np.arctan2(offset[1], offset[0])))
        assert np.linalg.norm(offset) == pytest.approx(11.0)
    azimuths = np.array(azimuths)
    assert azimuths.max() == pytest.approx(50.0, abs=0.1) and azimuths.min() == pytest.approx(10.0, abs=0.1)
    assert np.max(np.abs(np.diff(azimuths))) / 0.5 <= 2.0 + 1e-6


def test_new_scene_changes_objects_and_id(world):
    before = (world.scene_id, [o.attributes() for o in world.scene.objects])
    world.new_scene(start_frame=10)
    frame = world.render(10, rate=5.0)
    assert frame.scene_id == before[0] + 1
    assert [o.attributes() for o in frame.scene.objects] != before[1]


# ---------------------------------------------------------------------------------------------
# Labels and live bookkeeping
# ---------------------------------------------------------------------------------------------

def _frame(camera: Camera, stamp: int, visible=(True, True, True), scene_id=1) -> sc.TruthFrame:
    objects = [SceneObject("cube", "red", "rubber", "large", (0.0, -1.5, 0.5)),
               SceneObject("sphere", "blue", "metal", "small", (0.0, 1.5, 0.35)),
               SceneObject("cylinder", "green", "rubber", "small", (2.0, -1.5, 0.35))]
    boxes = [[10, 10, 30, 30], [50, 12, 60, 22], [80, 40, 90, 55]]
    return sc.TruthFrame(stamp, scene_id, objects, boxes, list(visible),
                         relations(objects, camera))


FRONT = orbit_camera(180.0, 30.0, 10.0)    # looking along +x: +y is on the left
BACK = orbit_camera(0.0, 30.0, 10.0)       # looking along -x: +y is on the right


def test_labels_follow_the_view_of_each_frame():
    # "the thing left of the red cube": the blue sphere from the front, nothing from behind.
    program = {"type": "refer", "ref": {"attrs": {}, "relation": "left",
                                        "anchor": {"attrs": {"color": "red"}, "relation": None, "anchor": None}}}
    query = sc.Query("ground", "point at the thing left of the red cube", program, "relational")
    front, back = _frame(FRONT, 1), _frame(BACK, 2)
    truth, _ = sc.label(query, front)
    assert truth["true_found"] and truth["true_box"] == [50, 12, 60, 22] and truth["target"] == 1
    assert execute(program, front.objects, front.relations) == 1
    truth, _ = sc.label(query, back)
    assert truth["true_found"] is False and truth["true_box"] is None
    # A question's answer is recomputed on the frame, too.
    count = sc.Query("vqa", "how many things are left of the red cube?",
                     {"type": "count", "ref": program["ref"]}, "relational", kind="count")
    assert sc.label(count, front)[0]["true_answer"] == "1"
    assert sc.label(count, back)[0]["true_answer"] == "0"


def test_labels_that_the_view_cannot_decide_are_not_scored():
    query = sc.Query("ground", "find the sphere",
                     {"type": "refer", "ref": {"attrs": {"shape": "sphere"}, "relation": None, "anchor": None}},
                     "template")
    hidden = _frame(FRONT, 1, visible=(True, False, True))
    assert sc.label(query, hidden) == (None, "partly hidden in this view")
    ambiguous = sc.Query("ground", "find the rubber thing",
                         {"type": "refer", "ref": {"attrs": {"material": "rubber"}, "relation": None, "anchor": None}},
                         "template")
    assert sc.label(ambiguous, _frame(FRONT, 1)) == (None, "ambiguous in this view")


def test_generated_queries_are_labelled_like_the_language_generator_labels_them():
    rng = np.random.default_rng(0)
    frame = _frame(FRONT, 1)
    for negative in (False, True):
        query = sc.make_command(frame, rng, negative)
        truth, _ = sc.label(query, frame)
        assert truth["true_found"] is (not negative)
    for kind in sc.VQA_KIND_CYCLE:
        query = sc.make_question(frame, rng, kind)
        if query is None:   # e.g. no compare question fits this tiny scene
            continue
        truth, _ = sc.label(query, frame)
        assert truth["true_answer"] == str(execute(query.program, frame.objects, frame.relations))
        assert query.kind == kind


def test_results_are_matched_by_stamp_and_unanswered_frames_count_as_dropped():
    score = sc.LiveScore()
    for stamp in range(1, 7):
        score.add_truth(_frame(FRONT, stamp))
    ground = sc.Query("ground", "find the red cube",
                      {"type": "refer", "ref": {"attrs": {"color": "red"}, "relation": None, "anchor": None}},
                      "template")
    ask = sc.Query("vqa", "what color is the sphere?",
                   {"type": "query", "attribute": "color",
                    "ref": {"attrs": {"shape": "sphere"}, "relation": None, "anchor": None}},
                   "template", kind="attribute")
    score.add_query(ground)
    score.add_query(ask)
    hit = score.add_result(sc.Result("ground", 2, "find  the red cube", found=True, score=0.9,
                                     box=[11, 10, 30, 31], inference_ms=5.0), latency_ms=20.0)
    assert hit["pred_found"] and hit["stamp_ns"] == 2 and metrics.score_grounding_item(hit)["correct_iou"]
    # A plain not-found carries a reason but the model ran: scored (and wrong here).
    miss = score.add_result(sc.Result("ground", 3, "find the red cube", found=False, score=0.2,
                                      inference_ms=5.0, reason="no match: best score 0.2"), 30.0)
    assert miss["pred_box"] is None and not metrics.score_grounding_item(miss)["correct_iou"]
    wrong = score.add_result(sc.Result("vqa", 5, "what color is the sphere?", answer="red",
                                       score=0.5, inference_ms=4.0), 40.0)
    assert wrong["true_answer"] == "blue"
    assert score.add_result(sc.Result("vqa", 99, "what color is the sphere?", answer="blue"), 1.0) is None
    assert score.add_result(sc.Result("vqa", 5, "some other text", answer="blue", inference_ms=1.0), 1.0) is None
    assert score.skipped == {"no ground truth with this stamp": 1, "text not sent by this scorer": 1}
    # Answered 2, 3, 5 (4 was skipped by the node); 1 (before) and 6 (after) do not count.
    assert score.frames() == {"sent": 4, "answered": 3, "dropped": 1, "drop_rate": 0.25}
    summary = score.summary()
    assert summary["metrics"]["grounding"]["overall"]["acc_iou"] == 0.5
    assert summary["metrics"]["vqa"]["overall"]["acc"] == 0.0
    assert summary["latency_ms"]["n"] == 4   # every result with a known stamp has a latency
    assert "dropped 1" in score.running_line(3.0)


def test_report_is_the_evaluation_report_with_live_numbers(tmp_path):
    score = sc.LiveScore()
    for stamp in (1, 2, 3):
        score.add_truth(_frame(FRONT, stamp))
    query = sc.Query("vqa", "how many spheres are there?",
                     {"type": "count", "ref": {"attrs": {"shape": "sphere"}, "relation": None, "anchor": None}},
                     "template", kind="count")
    score.add_query(query)
    store = sc.FrameStore(tmp_path / "out")
    for stamp in (1, 3):
        record = score.add_result(sc.Result("vqa", stamp, query.text, answer="1", score=0.7,
                                            inference_ms=3.0), 12.0)
        if stamp == 1:
            store.add_image(1, np.full((24, 32, 3), 7, np.uint8))
        store.attach(record)   # frame 3 never arrives: kept waiting, not saved
    assert store.write_manifest(score.records) == 1
    results = sc.write_report(tmp_path / "out", score, {"duration": 1.0}, 1.5, store.example_list())
    on_disk = json.loads((tmp_path / "out" / "results.json").read_text())
    assert on_disk["metrics"]["vqa"]["overall"] == {"n": 2, "acc": 1.0}
    assert on_disk["timing"]["dropped"] == {"sent": 3, "answered": 2, "dropped": 1, "drop_rate": 1 / 3}
    assert on_disk["timing"]["end_to_end_latency_ms"]["p50"] == 12.0
    assert [r["stamp_ns"] for r in on_disk["records"]] == [1, 3]
    assert any("1 of 3 frames got no result" in w for w in on_disk["warnings"])
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "| all | 2 | 100.0% |" in summary and (tmp_path / "out" / "examples.png").is_file()
    line = json.loads((tmp_path / "out" / "annotations.jsonl").read_text())
    assert line["image"] == "frames/1.png" and line["answer"] == "1"
    assert (tmp_path / "out" / "frames" / "1.png").is_file()
    assert not [p for p in (tmp_path / "out").rglob("*.partial")]
    assert results["counts"]["labelled"] == 2
