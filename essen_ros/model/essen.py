"""ESsEN: the two-tower vision-language model, and `build_model(config)` for both kinds.

Every model kind exposes the same four steps, so training and the Predictor never care
which kind they hold:
  encode_text(input_ids, attention_mask) -> text tokens      (cacheable per command)
  encode_image(pixels) -> (image tokens, grid)                (once per frame)
  fuse(text, text_mask, image, image_index) -> (text, image)  (per text x image pair)
  heads: pooled / itm / mlm / vqa / grounding on fused tokens
`image_index[k]` says which image text k is paired with, so the CNN runs once per image
however many texts are asked about it.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from essen_ros.model.config import ModelConfig, load_model_config
from essen_ros.model.fusion import build_fusion
from essen_ros.model.heads import Heads
from essen_ros.model.towers import ImageTower, TextTower


class VisionLanguageModel(nn.Module):
    """Shared fusion-to-heads path; subclasses provide the encoders and `fusion`."""

    config: ModelConfig
    heads: Heads
    tokenizer = None  # set by build_model / load_model; not part of the weights

    @property
    def answers(self) -> list[str]:
        return list(self.config.answers)

    def fuse(self, text, text_mask, image, image_index=None):
        if image_index is not None:
            image = image.index_select(0, image_index)
        return self.fusion(text, image, text_mask == 0)

    def forward(self, pixels, input_ids, attention_mask, image_index=None) -> dict:
        """Fused tokens and pooled feature for each text; heads are applied by the caller
        (only those a batch needs, see essen_ros.train)."""
        image_tokens, grid = self.encode_image(pixels)
        text = self.encode_text(input_ids, attention_mask)
        text, image = self.fuse(text, attention_mask, image_tokens, image_index)
        return {"text": text, "image": image, "grid": grid, "pooled": self.heads.pooler(text, image),
                "image_tokens": image_tokens}  # per image, before fusion (attribute aid)

    def ground(self, fused: dict):
        return self.heads.grounding(fused["image"], fused["pooled"], fused["grid"])

    def tied_parameter_names(self) -> list[str]:
        """State-dict names that alias another tensor (not stored twice in checkpoints)."""
        return ["heads.mlm.decoder.weight"]

    def parameter_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        seen: set[int] = set()
        for name, p in self.named_parameters(remove_duplicate=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            part = name.split(".")[0]
            counts[part] = counts.get(part, 0) + p.numel()
        counts["total"] = sum(counts.values())
        return counts


class TwoTowerModel(VisionLanguageModel):
    """ESsEN: CNN image tower + BERT text tower + co-attention (or merged) fusion."""

    def __init__(self, config: ModelConfig, pretrained: bool = False):
        super().__init__()
        self.config = config
        self.image_tower = ImageTower(config, pretrained)
        self.text_tower = TextTower(config, pretrained)
        f = config.fusion
        self.fusion = build_fusion(f.kind, f.width, f.depth, f.heads, f.ffn, f.dropout)
        self.heads = Heads(config.width, len(config.answers), self.text_tower.word_embeddings, config.head_dropout)

    def encode_text(self, input_ids, attention_mask):
        return self.text_tower(input_ids, attention_mask)

    def encode_image(self, pixels):
        return self.image_tower(pixels)


def build_model(config="default", pretrained: bool = True) -> VisionLanguageModel:
    """Model described by `config` (ModelConfig, dict, YAML path or name in config/).
    pretrained=True loads the towers' shipped weights where the config asks for them;
    load_model() builds with pretrained=False and then loads the checkpoint."""
    config = load_model_config(config)
    if config.kind == "one_tower":
        from essen_ros.model.onetower import OneTowerModel

        model: VisionLanguageModel = OneTowerModel(config)
    else:
        model = TwoTowerModel(config, pretrained)
    from essen_ros.model.towers import load_base_tokenizer

    model.tokenizer = load_base_tokenizer()
    return model


def parameter_summary(model: VisionLanguageModel) -> str:
    counts = model.parameter_counts()
    return ", ".join(f"{k} {v / 1e6:.2f} M" for k, v in counts.items())

