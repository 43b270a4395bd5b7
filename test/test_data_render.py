"""Renderer: image layout, boxes from segmentation, occlusion flags, camera projection."""
import numpy as np
import pytest

from essen_ros.data.render import Renderer
from essen_ros.data.scene import Scene, SceneObject, orbit_camera, relations, sample_scene


@pytest.fixture(scope="module")
def renderer():
    with Renderer(160, 120) as r:
        yield r


def test_image_is_rgb_uint8_of_the_requested_size(renderer):
    result = renderer.render(sample_scene(np.random.default_rng(0), image_size=(160, 120)))
    assert result.rgb.shape == (120, 160, 3) and result.rgb.dtype == np.uint8
    assert result.seg.shape == (120, 160)
    # The floor is gray: channels nearly equal where no object is.
    floor = result.rgb[result.seg < 0].astype(int)
    assert np.abs(floor[:, 0] - floor[:, 2]).mean() < 3


def test_boxes_are_the_tight_extent_of_each_objects_segmentation(renderer):
    for i in range(5):
        scene = sample_scene(np.random.default_rng(i), image_size=(160, 120))
        result = renderer.render(scene)
        for k, box in enumerate(result.boxes):
            ys, xs = np.nonzero(result.seg == k)
            if box is None:
                assert len(xs) == 0
                continue
            assert box == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            assert result.pixels[k] == len(xs)


def test_objects_take_their_colour_in_the_image(renderer):
    red = SceneObject("cube", "red", "rubber", "large", (0.0, 0.0, 0.495), 0.0)
    scene = Scene([red], orbit_camera(-40, 30, 10, fovy=30))
    result = renderer.render(scene)
    pixels = result.rgb[result.seg == 0].astype(int)
    r, g, b = pixels.mean(0)
    assert r > g + 40 and r > b + 40


def test_an_object_hidden_behind_a_big_one_is_not_visible(renderer):
    camera = orbit_camera(0, 20, 10, fovy=30)  # camera on the +x axis looking at the origin
    front = SceneObject("cube", "gray", "rubber", "large", (1.0, 0.0, 0.495), 0.0)
    hidden = SceneObject("sphere", "red", "rubber", "small", (-0.5, 0.0, 0.35), 0.0)
    beside = SceneObject("sphere", "blue", "rubber", "small", (0.0, 2.0, 0.35), 0.0)
    result = renderer.render(Scene([front, hidden, beside], camera))
    assert result.visible == [True, False, True]
    assert result.visible_fraction[1] < 0.3 < result.visible_fraction[2]


def test_projected_centre_lies_in_the_box_and_camera_can_move(renderer):
    scene = sample_scene(np.random.default_rng(7), n_objects=4, image_size=(160, 120))
    for azimuth in (0, 90, 200):
        camera = orbit_camera(azimuth, 35, 11, fovy=36)
        result = renderer.render(scene, camera=camera)
        assert result.camera is camera
        for box, (u, v), seen in zip(result.boxes, result.centers, result.visible):
            if seen:
                assert box[0] - 1 <= u <= box[2] + 1 and box[1] - 1 <= v <= box[3] + 1


def test_relations_follow_the_cameras_ground_axes():
    a = SceneObject("cube", "red", "rubber", "small", (0.0, -1.0, 0.25))
    b = SceneObject("cube", "blue", "rubber", "small", (0.0, 1.0, 0.25))
    camera = orbit_camera(0, 30, 10)   # on +x looking towards -x: +y is to the camera's right
    rels = relations([a, b], camera)
    assert rels["left"][1] == [0] and rels["right"][0] == [1]
    assert rels["front"] == [[], []] and rels["behind"] == [[], []]
    # Seen from the other side, left and right swap; the image agrees.
    behind_view = orbit_camera(180, 30, 10)
    assert relations([a, b], behind_view)["left"][0] == [1]
    u = behind_view.project([a.position, b.position], 160, 120)[:, 0]
    assert u[1] < u[0]


def test_same_scene_renders_identically(renderer):
    scene = sample_scene(np.random.default_rng(11), image_size=(160, 120))
    first = renderer.render(scene).rgb.copy()
    renderer.render(sample_scene(np.random.default_rng(12), image_size=(160, 120)))
    assert np.array_equal(first, renderer.render(scene).rgb)


def test_rotated_cubes_render_at_their_recorded_rotation(renderer):
    from essen_ros.data.render import surface_points
    camera = orbit_camera(0, 89, 8, fovy=40)   # looking straight down
    boxes = []
    for angle in (0.0, 20.0, 45.0):
        cube = SceneObject("cube", "red", "rubber", "large", (0.0, 0.0, 0.495), angle)
        box = renderer.render(Scene([cube], camera)).boxes[0]
        outline = camera.project(surface_points(cube), 160, 120)
        assert np.abs(np.array(box) - np.r_[outline.min(0), outline.max(0)]).max() <= 1.5
        boxes.append(box[2] - box[0])
    assert boxes[0] < boxes[1] < boxes[2]    # a turned square covers a wider extent


@pytest.mark.parametrize("size", [(96, 96), (128, 72), (120, 90)])
def test_floor_fills_the_view_for_any_aspect_ratio(size):
    with Renderer(*size) as r:
        for i in range(6):
            rgb = r.render(sample_scene(np.random.default_rng(i), image_size=size)).rgb
            assert (rgb.max(axis=2) < 20).sum() == 0   # no black sky above a horizon


def test_replacing_a_renderer_leaves_the_new_ones_images_intact():
    # The old renderer is freed while the new one's GL context is current; freeing must not
    # delete the new renderer's buffers (they share GL object ids).
    renderer = None
    for size in ((120, 90), (160, 120), (120, 90)):
        renderer = Renderer(*size)
        for i in range(4):
            rgb = renderer.render(sample_scene(np.random.default_rng(i), image_size=size)).rgb
            assert (rgb.max(axis=2) < 20).sum() == 0
    renderer.close()


def test_metal_is_darker_with_brighter_highlights_than_rubber(renderer):
    camera = orbit_camera(0, 30, 9, fovy=35)
    metal = SceneObject("sphere", "blue", "metal", "large", (0.0, -1.0, 0.7))
    rubber = SceneObject("sphere", "blue", "rubber", "large", (0.0, 1.0, 0.7))
    result = renderer.render(Scene([metal, rubber], camera))
    shine = [result.rgb[result.seg == k].astype(int).sum(axis=1) for k in (0, 1)]
    assert np.median(shine[0]) < np.median(shine[1])          # darker body
    assert np.percentile(shine[0], 99) > np.percentile(shine[1], 99) + 30   # highlight
