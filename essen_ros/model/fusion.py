"""Cross-modal fusion of text and image token sequences (both already at fusion width).

CoAttentionFusion: LXMERT-style layers. Each layer lets text attend to image and image attend
to text (both from the layer's inputs), then each stream has its own self-attention and
feed-forward block (post-LN, like BERT/LXMERT).
MergedAttentionFusion: one transformer over the concatenated sequences, so the paper's "the
fusion shape does not matter much" claim can be tested with the same heads.

Masks follow nn.MultiheadAttention: `text_pad` is True where a text position is padding.
"""
from __future__ import annotations

import torch
import torch.nn as nn


class _AttentionBlock(nn.Module):
    """x <- LN(x + Dropout(Attention(x, context)))."""

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, context, context_pad=None):
        out, _ = self.attn(x, context, context, key_padding_mask=context_pad, need_weights=False)
        return self.norm(x + self.dropout(out))


class _FeedForwardBlock(nn.Module):
    def __init__(self, width: int, ffn: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(width, ffn), nn.GELU(), nn.Dropout(dropout), nn.Linear(ffn, width))
        self.norm = nn.LayerNorm(width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.norm(x + self.dropout(self.net(x)))


class CoAttentionLayer(nn.Module):
    def __init__(self, width: int, heads: int, ffn: int, dropout: float):
        super().__init__()
        self.text_cross = _AttentionBlock(width, heads, dropout)
        self.image_cross = _AttentionBlock(width, heads, dropout)
        self.text_self = _AttentionBlock(width, heads, dropout)
        self.image_self = _AttentionBlock(width, heads, dropout)
        self.text_ffn = _FeedForwardBlock(width, ffn, dropout)
        self.image_ffn = _FeedForwardBlock(width, ffn, dropout)

    def forward(self, text, image, text_pad):
        text_x = self.text_cross(text, image)
        image_x = self.image_cross(image, text, text_pad)
        text_x = self.text_ffn(self.text_self(text_x, text_x, text_pad))
        image_x = self.image_ffn(self.image_self(image_x, image_x))
        return text_x, image_x


class CoAttentionFusion(nn.Module):
    def __init__(self, width: int, depth: int, heads: int, ffn: int, dropout: float):
        super().__init__()
        self.layers = nn.ModuleList(CoAttentionLayer(width, heads, ffn, dropout) for _ in range(depth))

    def forward(self, text, image, text_pad):
        for layer in self.layers:
            text, image = layer(text, image, text_pad)
        return text, image


class MergedAttentionFusion(nn.Module):
    """One post-LN transformer over [text; image]."""

    def __init__(self, width: int, depth: int, heads: int, ffn: int, dropout: float):
        super().__init__()
        layer = nn.TransformerEncoderLayer(width, heads, ffn, dropout, activation="gelu", batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)

    def forward(self, text, image, text_pad):
        n_text = text.shape[1]
        image_pad = torch.zeros(image.shape[:2], dtype=torch.bool, device=image.device)
        pad = torch.cat([text_pad, image_pad], dim=1) if text_pad is not None else None
        out = self.encoder(torch.cat([text, image], dim=1), src_key_padding_mask=pad)
        return out[:, :n_text], out[:, n_text:]


def build_fusion(kind: str, width: int, depth: int, heads: int, ffn: int, dropout: float) -> nn.Module:
    if kind == "coattention":
        return CoAttentionFusion(width, depth, heads, ffn, dropout)
    if kind == "merged":
        return MergedAttentionFusion(width, depth, heads, ffn, dropout)
    raise ValueError(f"unknown fusion kind {kind!r}")
