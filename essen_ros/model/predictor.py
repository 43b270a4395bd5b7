"""Predictor: the one inference API used by the ROS node, evaluation and the sim scorer.

    predictor = Predictor(load_model(path), device="cpu")
    text = predictor.encode_text("pick up the red cube")   # TextCache, reuse across frames
    img = predictor.encode_image(image_rgb)                 # ImageCache (preprocess + CNN once)
    g = predictor.ground(img, text)   # GroundResult(found, score, box_xyxy, candidates, ms)
    a = predictor.answer(img, text)   # AnswerResult(answer, score, top, ms)

Grounding: score = sigmoid(found logit) in [0, 1], found = score >= threshold. The box is
the one regressed at the most likely cell, mapped back to image pixels; candidates are the
next likely cells after non-maximum suppression, each scored score * p(cell) / p(best cell)
so candidates[0] is the answer itself. `ms` is the time of that call (ImageCache.ms holds
the image encoding time).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torchvision.ops import nms

from essen_ros.model.preprocess import LetterBox, preprocess


@dataclass
class TextCache:
    text: str
    input_ids: torch.Tensor        # (1, L)
    attention_mask: torch.Tensor   # (1, L)
    tokens: torch.Tensor           # (1, L, width) text tower output
    truncated: bool                # the text was longer than the model's token limit
    ms: float = 0.0


@dataclass
class ImageCache:
    tokens: torch.Tensor           # (1, 1 + h*w, width)
    grid: tuple[int, int]
    letterbox: LetterBox
    ms: float = 0.0


@dataclass
class GroundResult:
    found: bool
    score: float
    box_xyxy: list[float]          # image pixels (the best guess, also when not found)
    candidates: list[tuple[float, list[float]]] = field(default_factory=list)
    ms: float = 0.0


@dataclass
class AnswerResult:
    answer: str
    score: float
    top: list[tuple[str, float]] = field(default_factory=list)
    ms: float = 0.0


class Predictor:
    def __init__(self, model, device: "str | torch.device" = "cpu", threshold: float | None = None,
                 max_candidates: int = 5, nms_iou: float = 0.5):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.config = model.config
        self.tokenizer = model.tokenizer
        self.answers = list(model.config.answers)
        self.threshold = float(model.config.found_threshold if threshold is None else threshold)
        self.max_candidates = max_candidates
        self.nms_iou = nms_iou
        self._lock = threading.Lock()  # one forward at a time; the model is not re-entrant-safe
        # BatchNorm folded into the convolutions: same outputs, much faster CNN on CPU.
        image_tower = getattr(self.model, "image_tower", None)
        self._cnn = image_tower.fused_features().to(self.device) if image_tower is not None else None

    @property
    def input_size(self) -> tuple[int, int]:
        return tuple(self.config.input_size)

    # ---- encoders ------------------------------------------------------------------
    def encode_text(self, text: str) -> TextCache:
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        if not text.strip():
            raise ValueError("text is empty")
        start = time.perf_counter()
        limit = self.config.text.max_tokens
        full = self.tokenizer(text, add_special_tokens=True)["input_ids"]
        enc = self.tokenizer(text, truncation=True, max_length=limit, return_tensors="pt")
        ids = enc["input_ids"].to(self.device)
        mask = enc["attention_mask"].to(self.device)
        with self._lock, torch.inference_mode():
            tokens = self.model.encode_text(ids, mask)
        return TextCache(text, ids, mask, tokens, truncated=len(full) > limit,
                         ms=(time.perf_counter() - start) * 1000)

    def encode_image(self, image_rgb: np.ndarray) -> ImageCache:
        start = time.perf_counter()
        pixels, letterbox = preprocess(image_rgb, self.config.input_size)
        with self._lock, torch.inference_mode():
            pixels = pixels[None].to(self.device)
            if self._cnn is not None:
                tokens, grid = self.model.image_tower(pixels, features=self._cnn)
            else:
                tokens, grid = self.model.encode_image(pixels)
        return ImageCache(tokens, grid, letterbox, ms=(time.perf_counter() - start) * 1000)

    def _fuse(self, img: ImageCache, text: TextCache) -> dict:
        t, i = self.model.fuse(text.tokens, text.attention_mask, img.tokens)
        return {"text": t, "image": i, "grid": img.grid, "pooled": self.model.heads.pooler(t, i)}

    # ---- tasks ---------------------------------------------------------------------
    def ground(self, img: ImageCache, text: TextCache, threshold: float | None = None) -> GroundResult:
        start = time.perf_counter()
        threshold = self.threshold if threshold is None else float(threshold)
        with self._lock, torch.inference_mode():
            cell_logits, boxes, found_logit = self.model.ground(self._fuse(img, text))
        score = float(torch.sigmoid(found_logit[0]))
        cell_prob = torch.softmax(cell_logits[0].float(), dim=0)
        in_w, in_h = self.config.input_size
        scale = torch.tensor([in_w, in_h, in_w, in_h], dtype=torch.float32, device=boxes.device)
        boxes_px = boxes[0].float() * scale
        top = torch.topk(cell_prob, k=min(len(cell_prob), 4 * self.max_candidates))
        keep = nms(boxes_px[top.indices], top.values, self.nms_iou)[: self.max_candidates]
        best_prob = float(top.values[0])
        candidates = []
        for k in keep.tolist():
            prob = float(top.values[k])
            box = img.letterbox.to_image(boxes_px[top.indices[k]].tolist())
            candidates.append((score * prob / best_prob, box))
        best_box = img.letterbox.to_image(boxes_px[top.indices[0]].tolist())
        return GroundResult(found=score >= threshold, score=score, box_xyxy=best_box,
                            candidates=candidates, ms=(time.perf_counter() - start) * 1000)

    def answer(self, img: ImageCache, text: TextCache, top_k: int = 5) -> AnswerResult:
        start = time.perf_counter()
        with self._lock, torch.inference_mode():
            logits = self.model.heads.vqa(self._fuse(img, text)["pooled"])
        probs = torch.softmax(logits[0].float(), dim=0)
        values, indices = torch.topk(probs, k=min(top_k, len(probs)))
        top = [(self.answers[i], float(v)) for v, i in zip(values.tolist(), indices.tolist())]
        return AnswerResult(answer=top[0][0], score=top[0][1], top=top, ms=(time.perf_counter() - start) * 1000)

    def match(self, img: ImageCache, text: TextCache) -> float:
        """Probability that `text` describes the image (ITM head)."""
        with self._lock, torch.inference_mode():
            logits = self.model.heads.itm(self._fuse(img, text)["pooled"])
        return float(torch.softmax(logits[0].float(), dim=0)[1])
