"""Task heads shared by the two-tower and one-tower models, and their losses.

pooled = [text-CLS pooler ; image-CLS pooler] (2 x width), as in the ESsEN configs.
- ITM: pooled -> 2 classes (match / no match).
- MLM: fused text tokens -> vocabulary, decoder tied to the word embeddings.
- VQA: pooled -> answer vocabulary.
- Attributes (training aid): each image token *before* fusion predicts colour, shape,
  material and size of the object whose centre lies in its cell. Scene graphs give every
  object's attributes for free, so this dense signal teaches the image tower what "red" or
  "metal" look like far faster than the one target cell per referring expression does.
- Object boxes (training aid): every fused image cell that lies on an object (its centre
  cell, and every cell whose centre falls inside the object's box) regresses that object's
  box, whatever the text says. The grounding head then reads the box at the chosen cell, so
  this teaches box extents from every object in every pair, not from one target per
  expression, and a neighbouring cell of the target still carries the right box.
- Grounding: every fused image cell gets a logit (softmax over cells = where the target is)
  and a box regressed from the cell centre (distances to the four edges, as fractions of the
  input size); a found logit from the pooled feature says whether anything matches at all.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops import generalized_box_iou_loss


class Grid(tuple):
    """(h, w) of the image token grid, plus each cell's size as a fraction of the input
    (stride / input size). Strided convolutions round up (240 px / 32 -> 8 rows), so the
    cell size is not simply 1/h."""

    def __new__(cls, h: int, w: int, cell_w: float | None = None, cell_h: float | None = None):
        grid = super().__new__(cls, (int(h), int(w)))
        grid.cell_w = 1.0 / w if cell_w is None else float(cell_w)
        grid.cell_h = 1.0 / h if cell_h is None else float(cell_h)
        return grid

    def __reduce__(self):
        return (Grid, (self[0], self[1], self.cell_w, self.cell_h))


def as_grid(grid) -> Grid:
    return grid if isinstance(grid, Grid) else Grid(*grid)


def cell_centres(grid, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x and y of every cell centre (h*w each, row-major), as fractions of the input size,
    on `like`'s device and dtype."""
    grid = as_grid(grid)
    h, w = grid
    ys, xs = torch.meshgrid(torch.arange(h, device=like.device, dtype=like.dtype),
                            torch.arange(w, device=like.device, dtype=like.dtype), indexing="ij")
    return ((xs + 0.5) * grid.cell_w).reshape(-1), ((ys + 0.5) * grid.cell_h).reshape(-1)


def mlp(width_in: int, hidden: int, width_out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width_in, hidden), nn.LayerNorm(hidden), nn.GELU(),
                         nn.Dropout(dropout), nn.Linear(hidden, width_out))


class Pooler(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.text = nn.Sequential(nn.Linear(width, width), nn.Tanh())
        self.image = nn.Sequential(nn.Linear(width, width), nn.Tanh())

    def forward(self, text, image):
        return torch.cat([self.text(text[:, 0]), self.image(image[:, 0])], dim=-1)


class MLMHead(nn.Module):
    def __init__(self, width: int, embedding: nn.Embedding):
        super().__init__()
        hidden = embedding.embedding_dim
        self.transform = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.LayerNorm(hidden))
        self.decoder = nn.Linear(hidden, embedding.num_embeddings)
        self.decoder.weight = embedding.weight  # tied: saves vocab x hidden parameters

    def forward(self, text_tokens):
        return self.decoder(self.transform(text_tokens))


class GroundingHead(nn.Module):
    def __init__(self, width: int, dropout: float):
        super().__init__()
        self.cells = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, 5))
        self.found = mlp(2 * width, 2 * width, 1, dropout)

    def forward(self, image_tokens, pooled, grid):
        """-> cell_logits (B, h*w), boxes (B, h*w, 4) normalised xyxy, found_logit (B,)."""
        out = self.cells(image_tokens[:, 1:])
        cx, cy = cell_centres(grid, out)
        dist = F.softplus(out[..., 1:])
        boxes = torch.stack([cx - dist[..., 0], cy - dist[..., 1], cx + dist[..., 2], cy + dist[..., 3]], dim=-1)
        return out[..., 0], boxes, self.found(pooled).squeeze(-1)


ATTRIBUTE_GROUPS = (
    ("color", ("gray", "red", "blue", "green", "brown", "purple", "cyan", "yellow")),
    ("shape", ("cube", "sphere", "cylinder")),
    ("material", ("rubber", "metal")),
    ("size", ("small", "large")),
)


class AttributeHead(nn.Module):
    """Image token -> logits of every attribute group, concatenated (8 + 3 + 2 + 2)."""

    def __init__(self, width: int):
        super().__init__()
        self.linear = nn.Linear(width, sum(len(values) for _, values in ATTRIBUTE_GROUPS))

    def forward(self, tokens):
        return self.linear(tokens)


def attribute_targets(objects: list[dict]) -> list[list[int]]:
    """Per object, the class index in each attribute group (-100 when unknown)."""
    rows = []
    for obj in objects:
        rows.append([values.index(obj[name]) if obj.get(name) in values else -100
                     for name, values in ATTRIBUTE_GROUPS])
    return rows


def attribute_loss(logits, targets):
    """Sum over attribute groups of the cross-entropy at the objects' cells."""
    loss, start = logits.new_zeros(()), 0
    for g, (_, values) in enumerate(ATTRIBUTE_GROUPS):
        part = logits[:, start:start + len(values)]
        if bool((targets[:, g] >= 0).any()):
            loss = loss + F.cross_entropy(part, targets[:, g], ignore_index=-100)
        start += len(values)
    return loss


class Heads(nn.Module):
    def __init__(self, width: int, n_answers: int, embedding: nn.Embedding, dropout: float):
        super().__init__()
        self.attributes = AttributeHead(width)
        self.pooler = Pooler(width)
        self.itm = mlp(2 * width, 2 * width, 2, dropout)
        self.vqa = mlp(2 * width, 2 * width, n_answers, dropout)
        self.mlm = MLMHead(width, embedding)
        self.grounding = GroundingHead(width, dropout)


# ---- losses ----------------------------------------------------------------------------

def target_cells(boxes_norm: torch.Tensor, grid) -> torch.Tensor:
    """Index of the cell holding each (normalised xyxy) box centre."""
    grid = as_grid(grid)
    h, w = grid
    cx = ((boxes_norm[:, 0] + boxes_norm[:, 2]) / 2).clamp(0, 1 - 1e-6)
    cy = ((boxes_norm[:, 1] + boxes_norm[:, 3]) / 2).clamp(0, 1 - 1e-6)
    col = (cx / grid.cell_w).long().clamp(0, w - 1)
    row = (cy / grid.cell_h).long().clamp(0, h - 1)
    return row * w + col


def object_cell_mask(obj_boxes: torch.Tensor, grid) -> torch.Tensor:
    """(n_objects, h*w) bool: the cells that regress each object's box (normalised xyxy):
    its centre cell and every cell whose centre lies inside the box."""
    cx, cy = (c[None] for c in cell_centres(grid, obj_boxes))
    b = obj_boxes[:, :, None]
    inside = (cx > b[:, 0]) & (cx < b[:, 2]) & (cy > b[:, 1]) & (cy < b[:, 3])
    inside[torch.arange(len(obj_boxes), device=obj_boxes.device), target_cells(obj_boxes, grid)] = True
    return inside


def object_box_loss(boxes, row_image, obj_image, obj_boxes, grid):
    """L1 + GIoU of the boxes regressed at every object's cells (object_cell_mask) against
    that object's box, for every row (image-text pair) of the object's image.
    boxes (R, h*w, 4) from the grounding head; row_image (R,) image index of each row;
    obj_image (O,), obj_boxes (O, 4)."""
    pairs = (row_image[:, None] == obj_image[None, :]).nonzero()      # (P, 2): row, object
    if len(pairs) == 0:
        return boxes.sum() * 0.0
    mask = object_cell_mask(obj_boxes, grid)[pairs[:, 1]]             # (P, h*w)
    where = mask.nonzero()                                            # (N, 2): pair, cell
    pred = boxes[pairs[where[:, 0], 0], where[:, 1]]
    target = obj_boxes[pairs[where[:, 0], 1]]
    return F.l1_loss(pred, target) + generalized_box_iou_loss(pred, target, reduction="mean")


def grounding_loss(cell_logits, boxes, found_logit, target_box, found, grid, box_weight: float = 2.0):
    """CE over cells + L1 + GIoU at the target cell (found items only) + BCE on found."""
    loss = F.binary_cross_entropy_with_logits(found_logit, found.float())
    pos = found.bool()
    if pos.any():
        cells = target_cells(target_box[pos], grid)
        loss = loss + F.cross_entropy(cell_logits[pos], cells)
        pred = boxes[pos].gather(1, cells.view(-1, 1, 1).expand(-1, 1, 4)).squeeze(1)
        loss = loss + box_weight * (F.l1_loss(pred, target_box[pos])
                                    + generalized_box_iou_loss(pred, target_box[pos], reduction="mean"))
    return loss
