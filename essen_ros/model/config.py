"""Model configuration: one dataclass tree, read from YAML strictly.

Every model is fully described by its ModelConfig: the checkpoint stores it as config.yaml and
`build_model(config)` rebuilds the exact architecture from it. Unknown keys and impossible
shapes are rejected with the offending key named, before any weights are built.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# Fallback answer vocabulary, used only when essen_ros.data.vocab is not importable.
_FALLBACK_ANSWERS = (
    ["gray", "red", "blue", "green", "brown", "purple", "cyan", "yellow"]
    + ["cube", "sphere", "cylinder", "rubber", "metal", "small", "large", "yes", "no"]
    + [str(n) for n in range(11)]
)


def default_answers() -> list[str]:
    try:
        from essen_ros.data.vocab import ANSWERS

        return list(ANSWERS)
    except ImportError:
        return list(_FALLBACK_ANSWERS)


class ConfigError(ValueError):
    """A configuration that cannot describe a model (unknown key, impossible shape)."""


@dataclass
class ImageConfig:
    backbone: str = "mobilenet_v2"      # torchvision family; only mobilenet_v2 is wired up
    width_mult: float = 1.0             # 1.0 matches the shipped ImageNet weights
    cut: int = 17                       # keep features[:cut]; 17 -> 160 ch at stride 32, 14 -> 96 ch at 16
    pretrained: bool = True             # load ImageNet weights when the package is installed
    freeze_blocks: int = 0              # first k feature blocks frozen (BN in eval) to train faster


@dataclass
class TextConfig:
    init: str = "pretrained"            # "pretrained" (all-MiniLM-L6-v2 layers) or "scratch"
    hidden_size: int = 384
    layers: int = 3                     # first N layers of MiniLM kept (it has 6)
    heads: int = 12
    ffn: int = 1536
    vocab_size: int = 30522             # BERT uncased WordPiece; the tokenizer's size
    max_positions: int = 512
    max_tokens: int = 40                # longer texts are truncated (TextCache.truncated)


@dataclass
class FusionConfig:
    kind: str = "coattention"           # "coattention" (LXMERT-style) or "merged"
    width: int = 256
    depth: int = 2
    heads: int = 4
    ffn: int = 1024
    dropout: float = 0.1


@dataclass
class OneTowerConfig:
    """ViLT-style baseline: one transformer over image patch embeddings and word tokens."""
    width: int = 384
    depth: int = 6
    heads: int = 6
    ffn: int = 1536
    patch: int = 16
    dropout: float = 0.1


@dataclass
class ModelConfig:
    kind: str = "two_tower"             # "two_tower" (ESsEN) or "one_tower" (baseline)
    input_size: list = field(default_factory=lambda: [320, 240])  # (W, H) letterbox target
    image: ImageConfig = field(default_factory=ImageConfig)
    text: TextConfig = field(default_factory=TextConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    one_tower: OneTowerConfig = field(default_factory=OneTowerConfig)
    head_dropout: float = 0.1
    found_threshold: float = 0.5        # default Predictor threshold on the found score
    answers: list = field(default_factory=default_answers)

    # ---- derived -------------------------------------------------------------------
    @property
    def width(self) -> int:
        return self.one_tower.width if self.kind == "one_tower" else self.fusion.width

    def validate(self) -> "ModelConfig":
        def need(cond: bool, key: str, why: str) -> None:
            if not cond:
                raise ConfigError(f"model config: {key}: {why}")

        need(self.kind in ("two_tower", "one_tower"), "kind", f"must be two_tower or one_tower, got {self.kind!r}")
        need(isinstance(self.input_size, (list, tuple)) and len(self.input_size) == 2
             and all(isinstance(v, int) and v >= 32 for v in self.input_size),
             "input_size", f"must be [W, H] integers >= 32, got {self.input_size!r}")
        need(self.image.backbone == "mobilenet_v2", "image.backbone", f"only mobilenet_v2 is supported, got {self.image.backbone!r}")
        need(2 <= self.image.cut <= 19, "image.cut", f"must be in 2..19 (mobilenet_v2 has 19 feature blocks), got {self.image.cut}")
        need(0 <= self.image.freeze_blocks <= self.image.cut, "image.freeze_blocks", "must be in 0..image.cut")
        need(self.image.width_mult > 0, "image.width_mult", "must be > 0")
        need(self.text.init in ("pretrained", "scratch"), "text.init", f"must be pretrained or scratch, got {self.text.init!r}")
        need(self.text.layers >= 1, "text.layers", "must be >= 1")
        need(self.text.hidden_size % self.text.heads == 0, "text.hidden_size",
             f"{self.text.hidden_size} is not divisible by text.heads={self.text.heads}")
        need(2 <= self.text.max_tokens <= self.text.max_positions, "text.max_tokens", "must be in 2..text.max_positions")
        if self.text.init == "pretrained":
            need((self.text.hidden_size, self.text.heads, self.text.ffn, self.text.vocab_size) == (384, 12, 1536, 30522),
                 "text", "pretrained MiniLM needs hidden_size 384, heads 12, ffn 1536, vocab_size 30522")
            need(self.text.layers <= 6, "text.layers", "MiniLM has only 6 layers")
        need(self.fusion.kind in ("coattention", "merged"), "fusion.kind", f"must be coattention or merged, got {self.fusion.kind!r}")
        need(self.fusion.width % self.fusion.heads == 0, "fusion.width",
             f"{self.fusion.width} is not divisible by fusion.heads={self.fusion.heads}")
        need(self.fusion.depth >= 1, "fusion.depth", "must be >= 1")
        need(self.one_tower.width % self.one_tower.heads == 0, "one_tower.width",
             f"{self.one_tower.width} is not divisible by one_tower.heads={self.one_tower.heads}")
        need(self.one_tower.depth >= 1, "one_tower.depth", "must be >= 1")
        need(0.0 < self.found_threshold < 1.0, "found_threshold", "must be in (0, 1)")
        need(len(self.answers) >= 2 and len(set(self.answers)) == len(self.answers), "answers", "needs >= 2 distinct answers")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def from_dict(cls, data: Any, where: str = ""):
    """Build dataclass `cls` from a dict, refusing keys it does not declare."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in fields:
            raise ConfigError(f"unknown config key {path!r} (known: {', '.join(sorted(fields))})")
        sub = _dataclass_type(cls, key)
        kwargs[key] = from_dict(sub, value, path) if sub is not None else value
    return cls(**kwargs)


def _dataclass_type(cls, name: str):
    """The dataclass type of field `name`, if it is a nested config section."""
    default = dataclasses.MISSING
    for f in dataclasses.fields(cls):
        if f.name == name and f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
    return type(default) if dataclasses.is_dataclass(default) else None


def model_config_from_dict(data: dict) -> ModelConfig:
    return from_dict(ModelConfig, data).validate()


def load_model_config(source: "str | Path | dict | ModelConfig") -> ModelConfig:
    """A ModelConfig from a YAML path, a short name in config/ ("tiny" -> model_tiny.yaml),
    a dict, or an existing ModelConfig."""
    if isinstance(source, ModelConfig):
        return source.validate()
    if isinstance(source, dict):
        return model_config_from_dict(source)
    path = Path(source)
    if not path.suffix and not path.exists():
        from essen_ros.paths import config_path

        path = config_path(f"model_{source}.yaml")
    return model_config_from_dict(read_yaml(path))


def read_yaml(path: "str | Path") -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from err
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: top level must be a mapping")
    return data
