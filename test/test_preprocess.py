"""The one preprocessing path: channel order, letterbox geometry and box mapping are pinned."""
import numpy as np
import pytest
import torch

from essen_ros.model.preprocess import IMAGENET_MEAN, IMAGENET_STD, preprocess


def _normalised(value, channel):
    return (value / 255.0 - IMAGENET_MEAN[channel]) / IMAGENET_STD[channel]


def test_red_rgb_image_lands_in_channel_0():
    image = np.zeros((240, 320, 3), np.uint8)
    image[..., 0] = 255  # RGB: pure red
    tensor, _ = preprocess(image, (320, 240))
    assert tensor.shape == (3, 240, 320) and tensor.dtype == torch.float32
    assert tensor[0, 10, 10] == pytest.approx(_normalised(255, 0), abs=1e-4)
    assert tensor[1, 10, 10] == pytest.approx(_normalised(0, 1), abs=1e-4)
    assert tensor[2, 10, 10] == pytest.approx(_normalised(0, 2), abs=1e-4)


def test_wide_image_is_scaled_to_fit_and_padded_bottom_with_zero():
    image = np.full((320, 480, 3), 200, np.uint8)  # CLEVR size, aspect 1.5
    tensor, lb = preprocess(image, (320, 240))
    assert lb.scale == pytest.approx(320 / 480)
    assert lb.image_size == (480, 320)
    content_h = round(320 * lb.scale)  # 213 rows of content, then padding
    assert torch.all(tensor[:, content_h:, :] == 0)
    assert tensor[0, content_h - 1, 319] == pytest.approx(_normalised(200, 0), abs=1e-3)


def test_tall_image_is_padded_on_the_right():
    image = np.full((480, 320, 3), 50, np.uint8)
    tensor, lb = preprocess(image, (320, 240))
    content_w = round(320 * lb.scale)
    assert content_w == 160
    assert torch.all(tensor[:, :, content_w:] == 0)
    assert torch.all(tensor[:, :, :content_w] != 0)


def test_box_round_trip_and_clipping():
    image = np.zeros((320, 480, 3), np.uint8)
    _, lb = preprocess(image, (320, 240))
    box = [30.0, 60.0, 150.0, 300.0]
    assert lb.to_input(box) == pytest.approx([20.0, 40.0, 100.0, 200.0])
    assert lb.to_image(lb.to_input(box)) == pytest.approx(box)
    # A box reaching into the padding is clipped to the image.
    assert lb.to_image([-10, 200, 330, 239]) == pytest.approx([0.0, 300.0, 480.0, 320.0])


def test_object_pixels_map_to_the_mapped_box():
    image = np.zeros((320, 480, 3), np.uint8)
    image[90:150, 240:300] = 255  # a white square
    tensor, lb = preprocess(image, (320, 240))
    x0, y0, x1, y1 = (int(round(v)) for v in lb.to_input([240, 90, 300, 150]))
    inside = tensor[0, y0 + 2:y1 - 2, x0 + 2:x1 - 2]
    assert torch.all(inside > 2.0)
    assert torch.all(tensor[0, y1 + 2:y1 + 6, x0:x1] < 0)


@pytest.mark.parametrize("bad, error", [
    (np.zeros((10, 10, 4), np.uint8), ValueError),      # RGBA
    (np.zeros((10, 10), np.uint8), ValueError),         # mono
    (np.zeros((10, 10, 3), np.float32), ValueError),    # float
    (np.zeros((0, 10, 3), np.uint8), ValueError),       # empty
    ([[0, 0, 0]], TypeError),                           # not an array
])
def test_bad_images_are_refused_with_a_clear_error(bad, error):
    with pytest.raises(error, match="image"):
        preprocess(bad, (320, 240))


def test_read_only_arrays_are_accepted():
    image = np.full((24, 32, 3), 7, np.uint8)
    image.flags.writeable = False
    tensor, _ = preprocess(image, (32, 24))
    assert tensor.shape == (3, 24, 32)
