"""Camera messages -> RGB ``uint8`` arrays of shape (H, W, 3), without cv_bridge.

The array functions need only NumPy and Pillow, so they are importable and testable without
ROS; the message functions only read attributes (``width``, ``height``, ``step``,
``encoding``, ``is_bigendian``, ``data`` / ``format``, ``data``), so any object shaped like a
``sensor_msgs/Image`` or ``sensor_msgs/CompressedImage`` works.

Every failure raises a subclass of :class:`ImageConversionError` (a ``ValueError``) whose
message names the offending field or encoding, so a node can log it and drop the frame.

Encodings (names from ``sensor_msgs/image_encodings.hpp``; matching is case-insensitive):

* ``rgb8``, ``bgr8``, ``rgba8``, ``bgra8`` (alpha dropped), ``mono8``, ``8UC1`` (= mono8),
  ``8UC3`` (= bgr8, OpenCV's order, as cv_bridge does), ``8UC4`` (= bgra8).
* ``mono16`` / ``16UC1``: byte-swapped when ``is_bigendian`` differs from the host, then
  scaled so that the frame's maximum maps to 255. Scaling by the frame's maximum (rather
  than ``>> 8``) keeps 10/12-bit sensors and depth images in millimetres visible instead of
  nearly black; an all-zero frame stays black.
* ``yuv422`` / ``uyvy``: UYVY byte order (ROS's ``yuv422`` is UYVY); ``yuv422_yuy2`` /
  ``yuyv`` / ``yuy2``: YUYV order (V4L2 / usb_cam). Converted with ITU-R BT.601 video-range
  coefficients, as OpenCV's ``COLOR_YUV2RGB_UYVY`` / ``_YUYV`` do.
* ``bayer_rggb8``, ``bayer_bggr8``, ``bayer_gbrg8``, ``bayer_grbg8``: bilinear demosaic.
* Padded rows (``step > width * bytes_per_pixel``) are reshaped by ``step`` and cropped.
* CompressedImage: JPEG and PNG decoded by Pillow; the ``format`` string
  (``"jpeg"``, ``"png"``, ``"rgb8; jpeg compressed bgr8"``, ``"mono16; png compressed"``,
  ``"16UC1; compressedDepth png"``) is parsed, 16-bit PNGs are scaled like mono16.

Images with more than ``max_pixels`` pixels are refused from the header fields alone,
before any buffer is allocated or any compressed data is decoded.
"""
from __future__ import annotations

import io
import sys
from dataclasses import dataclass

import numpy as np

# 4096 x 4096: far above any camera this node should see, far below what exhausts memory.
DEFAULT_MAX_PIXELS = 4096 * 4096


class ImageConversionError(ValueError):
    """Base class: the message cannot be turned into an RGB image."""


class UnsupportedEncoding(ImageConversionError):
    """The encoding (or compressed format) is not one this module converts."""


class MalformedImage(ImageConversionError):
    """The message's fields are inconsistent (zero size, short data, step too small)."""


class ImageTooLarge(ImageConversionError):
    """width * height exceeds the configured pixel limit."""


@dataclass(frozen=True)
class _Layout:
    """How one encoding is stored: bytes per pixel and the converter from the cropped
    (H, W * bytes_per_pixel) uint8 rows to RGB."""

    bytes_per_pixel: int
    kind: str  # key into _CONVERTERS


# Canonical (lower-case) name -> layout. Aliases are resolved by _ALIASES first.
_LAYOUTS: dict[str, _Layout] = {
    "rgb8": _Layout(3, "rgb8"),
    "bgr8": _Layout(3, "bgr8"),
    "rgba8": _Layout(4, "rgba8"),
    "bgra8": _Layout(4, "bgra8"),
    "mono8": _Layout(1, "mono8"),
    "mono16": _Layout(2, "mono16"),
    "uyvy": _Layout(2, "uyvy"),
    "yuyv": _Layout(2, "yuyv"),
    "bayer_rggb8": _Layout(1, "bayer_rggb8"),
    "bayer_bggr8": _Layout(1, "bayer_bggr8"),
    "bayer_gbrg8": _Layout(1, "bayer_gbrg8"),
    "bayer_grbg8": _Layout(1, "bayer_grbg8"),
}

_ALIASES = {
    "8uc1": "mono8",
    "8uc3": "bgr8",
    "8uc4": "bgra8",
    "16uc1": "mono16",
    "yuv422": "uyvy",
    "yuv422_yuy2": "yuyv",
    "yuy2": "yuyv",
}

# Every name accepted in Image.encoding (and by a node's encoding override), as users write them.
SUPPORTED_ENCODINGS = (
    "rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16", "8UC1", "8UC3", "8UC4", "16UC1",
    "yuv422", "uyvy", "yuv422_yuy2", "yuyv", "yuy2",
    "bayer_rggb8", "bayer_bggr8", "bayer_gbrg8", "bayer_grbg8",
)


def canonical_encoding(encoding: str) -> str:
    """Resolve aliases and case; raise UnsupportedEncoding naming anything else."""
    name = (encoding or "").strip().lower()
    name = _ALIASES.get(name, name)
    if name not in _LAYOUTS:
        shown = encoding if encoding else "(empty)"
        raise UnsupportedEncoding(
            f"unsupported encoding {shown!r} (supported: {', '.join(SUPPORTED_ENCODINGS)})")
    return name


def is_supported_encoding(encoding: str) -> bool:
    try:
        canonical_encoding(encoding)
    except UnsupportedEncoding:
        return False
    return True


def check_pixel_limit(width: int, height: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Refuse oversize images from their declared size alone (nothing allocated yet)."""
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"image {width}x{height} = {width * height} pixels exceeds the limit of "
            f"{max_pixels} pixels (width/height fields)")


# ---------------------------------------------------------------------------------------------
# Raw images
# ---------------------------------------------------------------------------------------------

def raw_to_rgb(data, width: int, height: int, step: int, encoding: str,
               is_bigendian: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Convert the fields of a ``sensor_msgs/Image`` to an RGB uint8 (H, W, 3) array.

    ``data`` is anything exposing the buffer protocol (bytes, array.array, numpy array).
    The result never aliases ``data``.
    """
    width, height, step = int(width), int(height), int(step)
    if width <= 0:
        raise MalformedImage(f"width is {width}: must be positive")
    if height <= 0:
        raise MalformedImage(f"height is {height}: must be positive")
    check_pixel_limit(width, height, max_pixels)
    name = canonical_encoding(encoding)
    layout = _LAYOUTS[name]

    row_bytes = width * layout.bytes_per_pixel
    if step < row_bytes:
        raise MalformedImage(
            f"step is {step}: smaller than width * bytes per pixel = {width} * "
            f"{layout.bytes_per_pixel} = {row_bytes} for encoding {encoding!r}")
    if name in ("uyvy", "yuyv") and width % 2:
        raise MalformedImage(f"width is {width}: must be even for 4:2:2 encoding {encoding!r}")

    buffer = np.frombuffer(data, dtype=np.uint8)
    needed = step * height
    if buffer.size < needed:
        raise MalformedImage(
            f"data has {buffer.size} bytes: step * height = {step} * {height} = {needed} needed")

    # Reshape by step, then crop each row to its pixels: padded rows never shear.
    rows = buffer[:needed].reshape(height, step)[:, :row_bytes]
    if name == "mono16":
        return _mono16_to_rgb(rows, width, height, bool(is_bigendian))
    return _CONVERTERS[layout.kind](rows, width, height)


def image_to_rgb(msg, encoding_override: str = "",
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """``sensor_msgs/Image`` -> RGB uint8 (H, W, 3). ``encoding_override``, when not empty,
    replaces ``msg.encoding`` (for drivers that publish a wrong or empty encoding)."""
    encoding = encoding_override or msg.encoding
    return raw_to_rgb(msg.data, msg.width, msg.height, msg.step, encoding,
                      msg.is_bigendian, max_pixels)


def _rgb(rows, width, height):
    return rows.reshape(height, width, 3).copy()


def _bgr(rows, width, height):
    return np.ascontiguousarray(rows.reshape(height, width, 3)[:, :, ::-1])


def _rgba(rows, width, height):
    return np.ascontiguousarray(rows.reshape(height, width, 4)[:, :, :3])


def _bgra(rows, width, height):
    return np.ascontiguousarray(rows.reshape(height, width, 4)[:, :, 2::-1])


def _mono8(rows, width, height):
    return _gray_to_rgb(rows.reshape(height, width))


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[:, :, None], 3, axis=2)


def _mono16_to_rgb(rows, width, height, is_bigendian: bool) -> np.ndarray:
    byte_order = ">" if is_bigendian else "<"
    values = rows.reshape(height, width * 2).view(f"{byte_order}u2").reshape(height, width)
    return _gray_to_rgb(scale_16_to_8(values))


def scale_16_to_8(values: np.ndarray) -> np.ndarray:
    """16-bit intensities -> uint8, the frame's maximum mapped to 255 (see module doc)."""
    peak = int(values.max())
    if peak == 0:
        return np.zeros(values.shape, np.uint8)
    scaled = (values.astype(np.uint32) * 255 + peak // 2) // peak
    return scaled.astype(np.uint8)


def _yuv422(rows, width, height, order: str) -> np.ndarray:
    """4:2:2 -> RGB with BT.601 video-range coefficients (OpenCV's YUV2RGB_UYVY/_YUYV)."""
    quads = rows.reshape(height, width // 2, 4).astype(np.float32)
    if order == "uyvy":
        u, y0, v, y1 = (quads[..., i] for i in range(4))
    else:  # yuyv
        y0, u, y1, v = (quads[..., i] for i in range(4))
    y = np.empty((height, width), np.float32)
    y[:, 0::2], y[:, 1::2] = y0, y1
    y = (y - 16.0) * 1.164
    u = np.repeat(u - 128.0, 2, axis=1)
    v = np.repeat(v - 128.0, 2, axis=1)
    rgb = np.stack([y + 1.596 * v, y - 0.391 * u - 0.813 * v, y + 2.018 * u], axis=2)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


# Position of R, G, B in the 2x2 Bayer tile for each pattern: which (row % 2, col % 2)
# holds each colour. G appears twice.
_BAYER_TILES = {
    "bayer_rggb8": "RGGB",
    "bayer_bggr8": "BGGR",
    "bayer_gbrg8": "GBRG",
    "bayer_grbg8": "GRBG",
}


def _bayer(rows, width, height, pattern: str) -> np.ndarray:
    """Bilinear demosaic: each missing colour is the mean of its nearest samples of that
    colour (normalised convolution, so borders and odd sizes need no special case)."""
    mosaic = rows.reshape(height, width).astype(np.float32)
    tile = _BAYER_TILES[pattern]
    row_parity = np.arange(height)[:, None] % 2
    col_parity = np.arange(width)[None, :] % 2
    out = np.empty((height, width, 3), np.float32)
    for channel, colour in enumerate("RGB"):
        mask = np.zeros((height, width), np.float32)
        for index, tile_colour in enumerate(tile):
            if tile_colour == colour:
                mask += ((row_parity == index // 2) & (col_parity == index % 2))
        if colour == "G":
            kernel = np.array([[0, 1, 0], [1, 4, 1], [0, 1, 0]], np.float32)
        else:
            kernel = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], np.float32)
        weighted = _convolve3x3(mosaic * mask, kernel)
        weights = _convolve3x3(mask, kernel)
        out[:, :, channel] = weighted / np.maximum(weights, 1e-6)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _convolve3x3(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    padded = np.pad(image, 1)  # zero padding: the matching weights are zero there too
    height, width = image.shape
    result = np.zeros_like(image)
    for dy in range(3):
        for dx in range(3):
            if kernel[dy, dx]:
                result += kernel[dy, dx] * padded[dy:dy + height, dx:dx + width]
    return result


_CONVERTERS = {
    "rgb8": _rgb,
    "bgr8": _bgr,
    "rgba8": _rgba,
    "bgra8": _bgra,
    "mono8": _mono8,
    "uyvy": lambda r, w, h: _yuv422(r, w, h, "uyvy"),
    "yuyv": lambda r, w, h: _yuv422(r, w, h, "yuyv"),
    **{name: (lambda r, w, h, p=name: _bayer(r, w, h, p)) for name in _BAYER_TILES},
}


# ---------------------------------------------------------------------------------------------
# Compressed images
# ---------------------------------------------------------------------------------------------

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
# compressed_depth_image_transport prefixes the PNG with a 12-byte config header
# (int32 format + float32[2] depth quantisation parameters).
_COMPRESSED_DEPTH_HEADER = 12


def parse_compressed_format(format_string: str) -> tuple[str, str]:
    """Split a CompressedImage ``format`` into (codec, original encoding).

    ``"jpeg"`` -> ("jpeg", ""); ``"rgb8; jpeg compressed bgr8"`` -> ("jpeg", "rgb8");
    ``"16UC1; compressedDepth png"`` -> ("compresseddepth", "16uc1"); ``""`` -> ("", "")
    (codec detected from the data). Unknown codecs raise UnsupportedEncoding."""
    text = (format_string or "").strip().lower()
    original = ""
    if ";" in text:
        original, text = (part.strip() for part in text.split(";", 1))
    words = text.replace(",", " ").split()
    if "compresseddepth" in words:
        return "compresseddepth", original
    for word in words:
        if word in ("jpeg", "jpg"):
            return "jpeg", original
        if word == "png":
            return "png", original
    if not words:
        return "", original
    raise UnsupportedEncoding(
        f"unsupported compressed format {format_string!r} (format field; expected jpeg or png)")


def compressed_to_rgb(data, format_string: str = "",
                      max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode the fields of a ``sensor_msgs/CompressedImage`` to RGB uint8 (H, W, 3)."""
    from PIL import Image as PILImage

    codec, _original = parse_compressed_format(format_string)
    payload = bytes(data)
    if not payload:
        raise MalformedImage("data is empty (CompressedImage data field)")
    if codec == "compresseddepth" and not payload.startswith(_PNG_MAGIC):
        payload = payload[_COMPRESSED_DEPTH_HEADER:]
        codec = "png"
    detected = "png" if payload.startswith(_PNG_MAGIC) else (
        "jpeg" if payload.startswith(_JPEG_MAGIC) else "")
    if not detected:
        raise MalformedImage(
            f"data is not a JPEG or PNG stream (format field says {format_string!r})")
    if codec in ("jpeg", "png") and detected != codec:
        raise MalformedImage(
            f"format field says {codec} but the data is {detected}")

    try:
        # open() reads only the header: size is known before any pixel is decoded.
        with PILImage.open(io.BytesIO(payload)) as picture:
            width, height = picture.size
            if width <= 0 or height <= 0:
                raise MalformedImage(f"compressed image has size {width}x{height}")
            check_pixel_limit(width, height, max_pixels)
            picture.load()
            if picture.mode in ("I;16", "I;16B", "I;16L", "I"):
                values = np.asarray(picture).astype(np.uint32)
                return _gray_to_rgb(scale_16_to_8(np.minimum(values, 65535).astype(np.uint16)))
            return np.asarray(picture.convert("RGB"), dtype=np.uint8).copy()
    except ImageConversionError:
        raise
    except PILImage.DecompressionBombError as error:  # Pillow's own, fixed size limit
        raise ImageTooLarge(f"compressed image too large: {error}") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise MalformedImage(f"cannot decode {detected} data: {error}") from error


def compressed_image_to_rgb(msg, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """``sensor_msgs/CompressedImage`` -> RGB uint8 (H, W, 3)."""
    return compressed_to_rgb(msg.data, msg.format, max_pixels)


# ---------------------------------------------------------------------------------------------
# The other direction (debug image, simulated cameras, tests)
# ---------------------------------------------------------------------------------------------

def rgb_to_fields(rgb: np.ndarray, encoding: str = "rgb8") -> dict:
    """RGB uint8 (H, W, 3) -> the fields of a ``sensor_msgs/Image`` (width, height, step,
    encoding, is_bigendian, data) in ``rgb8``, ``bgr8`` or ``mono8``."""
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected uint8 (H, W, 3) RGB, got {rgb.dtype} {rgb.shape}")
    height, width = rgb.shape[:2]
    name = encoding.lower()
    if name == "rgb8":
        pixels = rgb
    elif name == "bgr8":
        pixels = rgb[:, :, ::-1]
    elif name == "mono8":
        pixels = np.rint(rgb @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)
    else:
        raise UnsupportedEncoding(f"cannot produce encoding {encoding!r} (rgb8, bgr8, mono8)")
    pixels = np.ascontiguousarray(pixels)
    channels = 1 if pixels.ndim == 2 else 3
    return {"width": width, "height": height, "step": width * channels, "encoding": name,
            "is_bigendian": int(sys.byteorder == "big"), "data": pixels.tobytes()}


def rgb_to_image_msg(rgb: np.ndarray, header=None, encoding: str = "rgb8"):
    """RGB uint8 (H, W, 3) -> ``sensor_msgs/Image`` (imports ROS messages lazily)."""
    from sensor_msgs.msg import Image

    msg = Image(**rgb_to_fields(rgb, encoding))
    if header is not None:
        msg.header = header
    return msg
