"""THE preprocessing function: RGB uint8 image -> normalised, letterboxed model input.

Training, evaluation and the ROS node all call `preprocess`; nothing else resizes or
normalises images, so the robot sees exactly what the model was trained on.

Policy: scale to fit inside `input_size` keeping the aspect ratio (bilinear, antialias),
place at the top-left corner, normalise with ImageNet statistics, pad right/bottom with 0
(which is the mean colour after normalisation).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class LetterBox:
    """Geometry of one letterbox: input pixel = image pixel * scale (top-left aligned)."""
    scale: float
    image_size: tuple[int, int]   # (W, H) of the original image
    input_size: tuple[int, int]   # (W, H) of the model input

    def to_input(self, box_xyxy) -> list[float]:
        return [float(v) * self.scale for v in box_xyxy]

    def to_image(self, box_xyxy) -> list[float]:
        """Input-pixel box -> image-pixel box, clipped to the image."""
        w, h = float(self.image_size[0]), float(self.image_size[1])
        x0, y0, x1, y1 = (float(v) / self.scale for v in box_xyxy)
        return [min(max(x0, 0.0), w), min(max(y0, 0.0), h), min(max(x1, 0.0), w), min(max(y1, 0.0), h)]


def check_image(image_rgb) -> np.ndarray:
    if not isinstance(image_rgb, np.ndarray):
        raise TypeError(f"image must be a numpy.ndarray (H, W, 3) uint8 RGB, got {type(image_rgb).__name__}")
    if image_rgb.dtype != np.uint8:
        raise ValueError(f"image must be uint8 RGB, got dtype {image_rgb.dtype}")
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
        raise ValueError(f"image must have shape (H, W, 3) RGB, got {image_rgb.shape}")
    if image_rgb.shape[0] < 1 or image_rgb.shape[1] < 1:
        raise ValueError(f"image is empty: shape {image_rgb.shape}")
    return image_rgb


def preprocess(image_rgb: np.ndarray, input_size) -> tuple[torch.Tensor, LetterBox]:
    """(H, W, 3) uint8 RGB -> ((3, H_in, W_in) float32 tensor, LetterBox)."""
    image_rgb = check_image(image_rgb)
    in_w, in_h = int(input_size[0]), int(input_size[1])
    h, w = image_rgb.shape[:2]
    scale = min(in_w / w, in_h / h)
    new_w, new_h = max(1, min(in_w, round(w * scale))), max(1, min(in_h, round(h * scale)))

    # Read-only arrays (e.g. from a ROS message buffer) are copied; torch cannot borrow them.
    array = image_rgb if image_rgb.flags.writeable else image_rgb.copy()
    pixels = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).float().div_(255.0)
    if (new_w, new_h) != (w, h):
        pixels = F.interpolate(pixels[None], size=(new_h, new_w), mode="bilinear",
                               align_corners=False, antialias=True)[0].clamp_(0.0, 1.0)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    out = torch.zeros(3, in_h, in_w)
    out[:, :new_h, :new_w] = (pixels - mean) / std
    return out, LetterBox(scale=scale, image_size=(w, h), input_size=(in_w, in_h))
