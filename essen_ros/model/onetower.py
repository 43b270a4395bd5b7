"""ViLT-style one-tower baseline: one randomly initialised transformer over image patch
embeddings and word embeddings, with the same heads as ESsEN (the paper's comparison).

Parameter-matched to the two-tower default by its config (config/model_onetower.yaml):
the word-embedding table dominates both models, the rest goes into transformer depth.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from essen_ros.model.config import ModelConfig
from essen_ros.model.essen import VisionLanguageModel
from essen_ros.model.fusion import MergedAttentionFusion
from essen_ros.model.heads import Grid, Heads
from essen_ros.model.towers import sinusoid_2d


class PatchEmbedding(nn.Module):
    def __init__(self, width: int, patch: int, dropout: float):
        super().__init__()
        self.conv = nn.Conv2d(3, width, kernel_size=patch, stride=patch)
        self.cls_embedding = nn.Parameter(torch.zeros(width))
        self.modality = nn.Parameter(torch.zeros(width))
        self.norm = nn.LayerNorm(width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, pixels):
        fmap = self.conv(pixels)
        b, c, h, w = fmap.shape
        cells = fmap.flatten(2).transpose(1, 2) + sinusoid_2d(h, w, c).to(fmap.device)
        cls = fmap.mean(dim=(2, 3)) + self.cls_embedding
        tokens = torch.cat([cls[:, None], cells], dim=1) + self.modality
        stride = self.conv.stride[0]
        return self.dropout(self.norm(tokens)), Grid(h, w, stride / pixels.shape[-1], stride / pixels.shape[-2])


class WordEmbedding(nn.Module):
    def __init__(self, vocab_size: int, max_tokens: int, width: int, dropout: float):
        super().__init__()
        self.words = nn.Embedding(vocab_size, width, padding_idx=0)
        self.positions = nn.Embedding(max_tokens, width)
        self.modality = nn.Parameter(torch.zeros(width))
        self.norm = nn.LayerNorm(width)
        self.dropout = nn.Dropout(dropout)
        nn.init.normal_(self.words.weight, std=0.02)
        nn.init.normal_(self.positions.weight, std=0.02)

    def forward(self, input_ids):
        pos = torch.arange(input_ids.shape[1], device=input_ids.device)
        return self.dropout(self.norm(self.words(input_ids) + self.positions(pos) + self.modality))


class OneTowerModel(VisionLanguageModel):
    def __init__(self, config: ModelConfig, pretrained: bool = False):
        super().__init__()
        self.config = config
        o = config.one_tower
        self.patches = PatchEmbedding(o.width, o.patch, o.dropout)
        self.words = WordEmbedding(config.text.vocab_size, config.text.max_tokens, o.width, o.dropout)
        self.fusion = MergedAttentionFusion(o.width, o.depth, o.heads, o.ffn, o.dropout)
        self.heads = Heads(o.width, len(config.answers), self.words.words, config.head_dropout)

    def encode_text(self, input_ids, attention_mask):
        return self.words(input_ids)

    def encode_image(self, pixels):
        return self.patches(pixels)
