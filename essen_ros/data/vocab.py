"""The closed vocabulary of the scene world: attribute values and the VQA answer list.

`ANSWERS` is the VQA head's class list. Its order is part of every checkpoint
(`answers.json`), so it is frozen: append only, never reorder.
"""
from __future__ import annotations

SHAPES = ("cube", "sphere", "cylinder")
COLORS = ("gray", "red", "blue", "green", "brown", "purple", "cyan", "yellow")
MATERIALS = ("rubber", "metal")
SIZES = ("small", "large")

ATTRIBUTES = {"shape": SHAPES, "color": COLORS, "material": MATERIALS, "size": SIZES}

COUNT_ANSWERS = tuple(str(n) for n in range(11))
ANSWERS = (list(COLORS) + list(SHAPES) + list(MATERIALS) + list(SIZES)
           + ["yes", "no"] + list(COUNT_ANSWERS))
ANSWER_INDEX = {answer: index for index, answer in enumerate(ANSWERS)}

# CLEVR's own object colours (sRGB 0-255), from its render_images.py properties.
CLEVR_RGB = {
    "gray": (87, 87, 87),
    "red": (173, 35, 35),
    "blue": (42, 75, 215),
    "green": (29, 105, 20),
    "brown": (129, 74, 25),
    "purple": (129, 38, 192),
    "cyan": (41, 208, 208),
    "yellow": (255, 238, 51),
}

# CLEVR's object "radius" in scene units; large objects are twice the small ones.
SIZE_RADIUS = {"small": 0.35, "large": 0.7}


def attribute_of(value: str) -> str:
    """Which attribute a value belongs to ('red' -> 'color'); KeyError for unknown words."""
    for name, values in ATTRIBUTES.items():
        if value in values:
            return name
    raise KeyError(f"unknown attribute value {value!r}")


def check_value(attribute: str, value: str) -> str:
    """Raise a clear ValueError for unknown attribute values (bad user input)."""
    if attribute not in ATTRIBUTES:
        raise ValueError(f"unknown attribute {attribute!r}; known: {', '.join(ATTRIBUTES)}")
    if value not in ATTRIBUTES[attribute]:
        raise ValueError(f"unknown {attribute} {value!r}; known: {', '.join(ATTRIBUTES[attribute])}")
    return value
