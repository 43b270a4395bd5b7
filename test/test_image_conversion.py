"""Camera message -> RGB conversion, without any ROS process (messages built in-process)."""
from __future__ import annotations

import struct
import sys
import tracemalloc
import zlib

import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image

from essen_ros.ros.image_conversion import (ImageConversionError, ImageTooLarge,
                                            MalformedImage, SUPPORTED_ENCODINGS,
                                            UnsupportedEncoding, compressed_image_to_rgb,
                                            compressed_to_rgb, image_to_rgb,
                                            parse_compressed_format, raw_to_rgb,
                                            rgb_to_image_msg)
from node_harness import compress, expected_rgb, make_image_msg, sample_image

LOSSLESS = ["rgb8", "bgr8", "rgba8", "bgra8", "8UC3", "8UC4"]
GRAY = ["mono8", "8UC1", "mono16", "16UC1"]
YUV = ["yuv422", "uyvy", "yuv422_yuy2", "yuyv", "yuy2"]
BAYER = ["bayer_rggb8", "bayer_bggr8", "bayer_gbrg8", "bayer_grbg8"]


def test_every_listed_encoding_is_covered_by_these_tests():
    assert set(SUPPORTED_ENCODINGS) == set(LOSSLESS + GRAY + YUV + BAYER)


@pytest.mark.parametrize("encoding", LOSSLESS)
def test_colour_encodings_convert_exactly_to_rgb(encoding):
    rgb = sample_image()
    out = image_to_rgb(make_image_msg(rgb, encoding))
    assert out.dtype == np.uint8 and out.shape == rgb.shape
    np.testing.assert_array_equal(out, rgb)


@pytest.mark.parametrize("encoding", GRAY)
def test_gray_encodings_become_three_equal_channels(encoding):
    rgb = sample_image()
    out = image_to_rgb(make_image_msg(rgb, encoding))
    np.testing.assert_array_equal(out, expected_rgb(rgb, encoding))


def test_mono16_is_scaled_by_the_frame_maximum_not_truncated():
    values = np.array([[0, 1000, 4000]], np.uint16)  # 12-bit camera
    out = raw_to_rgb(values.astype("<u2").tobytes(), 3, 1, 6, "mono16", is_bigendian=False)
    assert out[0, :, 0].tolist() == [0, 64, 255]


@pytest.mark.parametrize("bigendian", [False, True])
def test_16_bit_byte_order_follows_is_bigendian(bigendian):
    values = np.array([[0x0102, 0x0A00, 0x0001]], np.uint16)
    data = values.astype(">u2" if bigendian else "<u2").tobytes()
    out = raw_to_rgb(data, 3, 1, 6, "16UC1", is_bigendian=bigendian)
    expected = np.rint(values.astype(float) * 255 / 0x0A00).astype(np.uint8)
    assert out[0, :, 1].tolist() == expected[0].tolist()
    # The same bytes read with the wrong byte order give a different picture.
    wrong = raw_to_rgb(data, 3, 1, 6, "16UC1", is_bigendian=not bigendian)
    assert wrong[0, :, 1].tolist() != expected[0].tolist()


def test_all_zero_mono16_frame_stays_black():
    out = raw_to_rgb(bytes(8), 2, 2, 4, "mono16")
    assert not out.any()


@pytest.mark.parametrize("encoding", YUV)
def test_yuv422_variants_decode_to_the_original_colours(encoding):
    rgb = sample_image()
    out = image_to_rgb(make_image_msg(rgb, encoding))
    # 4:2:2 halves the horizontal chroma resolution: compare where colour is smooth.
    error = np.abs(out.astype(int) - rgb.astype(int))
    assert np.median(error) <= 2 and np.percentile(error, 90) <= 6


def test_uyvy_and_yuyv_byte_orders_are_not_confused():
    rgb = sample_image()
    uyvy = make_image_msg(rgb, "uyvy")
    as_yuyv = image_to_rgb(uyvy, encoding_override="yuyv")
    assert np.abs(as_yuyv.astype(int) - rgb.astype(int)).mean() > 20


def test_yuv422_uses_video_range_like_opencv():
    # Y=16 is black and Y=235 white in BT.601 video range; U=V=128 is grey.
    data = bytes([128, 16, 128, 235])  # UYVY: U Y0 V Y1
    out = raw_to_rgb(data, 2, 1, 4, "yuv422")
    assert out[0, 0].tolist() == [0, 0, 0] and out[0, 1].tolist() == [255, 255, 255]


@pytest.mark.parametrize("encoding", BAYER)
def test_bayer_patterns_demosaic_to_the_original_colours(encoding):
    rgb = sample_image()
    out = image_to_rgb(make_image_msg(rgb, encoding))
    error = np.abs(out.astype(int) - rgb.astype(int))[2:-2, 2:-2]
    assert np.median(error) <= 3 and error.mean() < 8


@pytest.mark.parametrize("encoding", BAYER)
def test_bayer_uniform_colour_is_reproduced_everywhere(encoding):
    rgb = np.zeros((6, 8, 3), np.uint8)
    rgb[:] = (200, 90, 30)
    out = image_to_rgb(make_image_msg(rgb, encoding))
    np.testing.assert_array_equal(out, rgb)


def test_wrong_bayer_pattern_gives_wrong_colours():
    rgb = np.zeros((6, 8, 3), np.uint8)
    rgb[:] = (200, 90, 30)
    out = image_to_rgb(make_image_msg(rgb, "bayer_rggb8"), encoding_override="bayer_bggr8")
    assert out[2, 2].tolist() == [30, 90, 200]


@pytest.mark.parametrize("encoding", ["rgb8", "bgra8", "mono8", "mono16", "yuyv", "bayer_grbg8"])
def test_padded_rows_are_cropped_not_sheared(encoding):
    rgb = sample_image()
    plain_msg = make_image_msg(rgb, encoding)
    plain = image_to_rgb(plain_msg)
    padded_msg = make_image_msg(rgb, encoding, padding=13)
    assert padded_msg.step == plain_msg.step + 13
    np.testing.assert_array_equal(image_to_rgb(padded_msg), plain)


def test_data_longer_than_step_times_height_is_accepted():
    rgb = sample_image()
    msg = make_image_msg(rgb, "rgb8")
    msg.data = bytes(msg.data) + b"\x00" * 100
    np.testing.assert_array_equal(image_to_rgb(msg), rgb)


def test_encoding_names_are_case_insensitive():
    rgb = sample_image()
    np.testing.assert_array_equal(image_to_rgb(make_image_msg(rgb, "RGB8")), rgb)


def test_result_does_not_alias_the_message_buffer():
    rgb = sample_image()
    msg = make_image_msg(rgb, "rgb8")
    out = image_to_rgb(msg)
    out[:] = 0
    np.testing.assert_array_equal(image_to_rgb(msg), rgb)


@pytest.mark.parametrize("encoding", ["32FC1", "rgb16", "jpeg", ""])
def test_unsupported_encodings_are_rejected_by_name(encoding):
    msg = Image(width=2, height=2, step=8, encoding=encoding, data=bytes(16))
    with pytest.raises(UnsupportedEncoding) as error:
        image_to_rgb(msg)
    assert "unsupported encoding" in str(error.value)
    assert (repr(encoding) if encoding else "(empty)") in str(error.value)
    assert isinstance(error.value, ValueError)


@pytest.mark.parametrize("fields, named", [
    ({"width": 0}, "width"),
    ({"height": 0}, "height"),
    ({"step": 0}, "step"),
    ({"step": 5}, "step"),
    ({"data": bytes(10)}, "data"),
    ({"data": b""}, "data"),
])
def test_malformed_messages_raise_errors_naming_the_field(fields, named):
    msg = Image(width=4, height=3, step=12, encoding="rgb8", data=bytes(36))
    for key, value in fields.items():
        setattr(msg, key, value)
    with pytest.raises(MalformedImage) as error:
        image_to_rgb(msg)
    assert str(error.value).startswith(named)


def test_odd_width_yuv422_is_malformed():
    with pytest.raises(MalformedImage, match="width"):
        raw_to_rgb(bytes(6), 3, 1, 6, "yuv422")


def test_pixel_limit_is_checked_before_the_data_is_touched():
    # Declares 100000 x 100000 pixels with 12 bytes of data: must be "too large", not
    # "data too short", and allocate nothing on the way.
    msg = Image(width=100_000, height=100_000, step=300_000, encoding="rgb8", data=bytes(12))
    tracemalloc.start()
    try:
        with pytest.raises(ImageTooLarge, match="exceeds the limit"):
            image_to_rgb(msg, max_pixels=1_000_000)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000


def test_pixel_limit_is_configurable():
    rgb = sample_image(32, 16)
    msg = make_image_msg(rgb, "rgb8")
    with pytest.raises(ImageTooLarge):
        image_to_rgb(msg, max_pixels=32 * 16 - 1)
    np.testing.assert_array_equal(image_to_rgb(msg, max_pixels=32 * 16), rgb)


# --- compressed -----------------------------------------------------------------------------

@pytest.mark.parametrize("format_string, codec, original", [
    ("jpeg", "jpeg", ""),
    ("png", "png", ""),
    ("rgb8; jpeg compressed bgr8", "jpeg", "rgb8"),
    ("bgr8; png compressed bgr8", "png", "bgr8"),
    ("mono16; png compressed", "png", "mono16"),
    ("16UC1; compressedDepth png", "compresseddepth", "16uc1"),
    ("", "", ""),
])
def test_compressed_format_strings_are_parsed(format_string, codec, original):
    assert parse_compressed_format(format_string) == (codec, original)


def test_unknown_compressed_format_is_rejected_by_name():
    with pytest.raises(UnsupportedEncoding, match="'tiff'"):
        parse_compressed_format("tiff")


def test_png_decodes_losslessly():
    rgb = sample_image()
    msg = CompressedImage(format="rgb8; png compressed rgb8", data=compress(rgb, "PNG"))
    np.testing.assert_array_equal(compressed_image_to_rgb(msg), rgb)


def test_jpeg_decodes_in_rgb_order():
    rgb = sample_image()
    out = compressed_to_rgb(compress(rgb, "JPEG", quality=95), "rgb8; jpeg compressed bgr8")
    assert out.shape == rgb.shape
    assert np.abs(out.astype(int) - rgb.astype(int)).mean() < 4


def test_16_bit_png_is_scaled_like_mono16():
    from PIL import Image as PILImage
    import io

    values = np.array([[0, 1000], [2000, 4000]], np.uint16)
    buffer = io.BytesIO()
    PILImage.fromarray(values).save(buffer, format="PNG")
    out = compressed_to_rgb(buffer.getvalue(), "16UC1; png compressed")
    assert out[:, :, 0].tolist() == [[0, 64], [128, 255]]


def test_compressed_depth_header_is_skipped():
    from PIL import Image as PILImage
    import io

    values = np.array([[0, 500], [1000, 2000]], np.uint16)
    buffer = io.BytesIO()
    PILImage.fromarray(values).save(buffer, format="PNG")
    payload = struct.pack("<iff", 0, 0.0, 0.0) + buffer.getvalue()
    out = compressed_to_rgb(payload, "16UC1; compressedDepth png")
    assert out[:, :, 0].tolist() == [[0, 64], [128, 255]]


def test_format_contradicting_the_data_is_malformed():
    with pytest.raises(MalformedImage, match="format field says jpeg"):
        compressed_to_rgb(compress(sample_image(), "PNG"), "jpeg")


@pytest.mark.parametrize("payload", [b"", b"not an image at all", b"\xff\xd8\xff\xe0garbage"])
def test_garbage_compressed_data_is_malformed(payload):
    with pytest.raises(MalformedImage):
        compressed_to_rgb(payload, "jpeg")


def _png_header_only(width, height):
    def chunk(kind, body):
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IEND", b""))


def test_compressed_pixel_limit_is_checked_from_the_header_before_decoding():
    # A 9000 x 9000 PNG header (243 MB decoded) in a few dozen bytes.
    tracemalloc.start()
    try:
        with pytest.raises(ImageTooLarge, match="9000x9000"):
            compressed_to_rgb(_png_header_only(9000, 9000), "png", max_pixels=1_000_000)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000


def test_decompression_bombs_beyond_pillows_own_limit_are_too_large_too():
    with pytest.raises(ImageTooLarge):
        compressed_to_rgb(_png_header_only(60_000, 60_000), "png", max_pixels=1 << 40)


def test_every_failure_is_a_value_error():
    assert issubclass(ImageConversionError, ValueError)
    for cls in (UnsupportedEncoding, MalformedImage, ImageTooLarge):
        assert issubclass(cls, ImageConversionError)


def test_rgb_to_image_msg_round_trips():
    rgb = sample_image()
    for encoding in ("rgb8", "bgr8"):
        msg = rgb_to_image_msg(rgb, encoding=encoding)
        assert msg.step == rgb.shape[1] * 3 and msg.is_bigendian == (sys.byteorder == "big")
        np.testing.assert_array_equal(image_to_rgb(msg), rgb)
