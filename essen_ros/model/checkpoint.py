"""Checkpoint folders: config.yaml, model.safetensors, tokenizer/, answers.json, metrics.json.

Loading never unpickles (safetensors, YAML, JSON and tokenizer text files only), so a
checkpoint from an untrusted source cannot run code. Saving is atomic: everything is written
into a temporary sibling folder which then replaces the old one, so an interrupted save
leaves the previous checkpoint intact.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
import yaml

from essen_ros.model.config import ConfigError, model_config_from_dict

log = logging.getLogger(__name__)

WEIGHTS = "model.safetensors"
REQUIRED = ("config.yaml", WEIGHTS, "tokenizer", "answers.json")


class CheckpointError(RuntimeError):
    """A checkpoint folder that is missing, incomplete or corrupt."""


def atomic_folder(path: "str | Path"):
    """Context manager yielding a temporary folder that replaces `path` on success only."""
    return _AtomicFolder(Path(path))


class _AtomicFolder:
    def __init__(self, path: Path):
        self.path = path

    def __enter__(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.tmp-", dir=self.path.parent))
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        _make_readable(self.tmp)
        old = self.path.with_name(f".{self.path.name}.old-{os.getpid()}")
        if self.path.exists():
            os.replace(self.path, old)
        os.replace(self.tmp, self.path)
        shutil.rmtree(old, ignore_errors=True)
        return False


def _make_readable(folder: Path) -> None:
    """mkdtemp creates 0700 folders; give the result the usual umask-based modes."""
    umask = os.umask(0)
    os.umask(umask)
    for root, dirs, files in os.walk(folder):
        os.chmod(root, 0o777 & ~umask)
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~umask)


def model_state(model, fp16: bool = False) -> dict[str, torch.Tensor]:
    """State dict without tied aliases; floating tensors optionally in fp16 for shipping."""
    tied = set(model.tied_parameter_names())
    state = {}
    for name, tensor in model.state_dict().items():
        if name in tied:
            continue
        tensor = tensor.detach().cpu()
        if fp16 and tensor.is_floating_point():
            tensor = tensor.half()
        state[name] = tensor.contiguous()
    return state


def write_checkpoint_files(folder: Path, model, metrics: dict | None = None, fp16: bool = False) -> None:
    from safetensors.torch import save_file

    folder = Path(folder)
    (folder / "config.yaml").write_text(yaml.safe_dump(model.config.to_dict(), sort_keys=False))
    save_file(model_state(model, fp16), str(folder / WEIGHTS), metadata={"format": "pt", "dtype": "fp16" if fp16 else "fp32"})
    model.tokenizer.save_pretrained(str(folder / "tokenizer"))
    (folder / "answers.json").write_text(json.dumps(list(model.config.answers), indent=1))
    provenance = {"saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "parameters": model.parameter_counts(), "weights_dtype": "fp16" if fp16 else "fp32"}
    provenance.update(metrics or {})
    (folder / "metrics.json").write_text(json.dumps(provenance, indent=1, default=str))


def save_checkpoint(model, path: "str | Path", metrics: dict | None = None, fp16: bool = False) -> Path:
    """Write `model` as a checkpoint folder at `path`, atomically. Returns the path."""
    path = Path(path)
    with atomic_folder(path) as tmp:
        write_checkpoint_files(tmp, model, metrics, fp16)
    return path


def load_model(path: "str | Path", device: "str | torch.device" = "cpu"):
    """The model stored in checkpoint folder `path`, fp32, eval mode, with `.tokenizer`.
    Raises CheckpointError naming the path when anything is missing or corrupt."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint not found: {path} is not a folder")
    missing = [name for name in REQUIRED if not (path / name).exists()]
    if missing:
        raise CheckpointError(f"checkpoint {path} is incomplete: missing {', '.join(missing)}")
    try:
        config_data = yaml.safe_load((path / "config.yaml").read_text())
        config = model_config_from_dict(config_data)
    except (yaml.YAMLError, ConfigError, TypeError) as err:
        raise CheckpointError(f"checkpoint {path}: bad config.yaml: {err}") from err
    try:
        answers = json.loads((path / "answers.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"checkpoint {path}: bad answers.json: {err}") from err
    if answers != list(config.answers):
        raise CheckpointError(f"checkpoint {path}: answers.json does not match config.yaml answers")
    try:
        state = load_file(str(path / WEIGHTS))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"checkpoint {path}: corrupt {WEIGHTS}: {err}") from err

    model = _build_without_tokenizer(config)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    result = model.load_state_dict(state, strict=False)
    missing_keys = [k for k in result.missing_keys if k not in model.tied_parameter_names()]
    if missing_keys or result.unexpected_keys:
        raise CheckpointError(f"checkpoint {path}: weights do not fit config.yaml "
                              f"(missing {missing_keys[:5]}, unexpected {result.unexpected_keys[:5]})")
    try:
        from transformers import BertTokenizerFast

        model.tokenizer = BertTokenizerFast.from_pretrained(str(path / "tokenizer"))
    except Exception as err:  # noqa: BLE001 - any tokenizer failure means a broken folder
        raise CheckpointError(f"checkpoint {path}: cannot read tokenizer/: {err}") from err
    return model.to(device).eval()


def _build_without_tokenizer(config):
    if config.kind == "one_tower":
        from essen_ros.model.onetower import OneTowerModel

        return OneTowerModel(config)
    from essen_ros.model.essen import TwoTowerModel

    return TwoTowerModel(config, pretrained=False)


def read_metrics(path: "str | Path") -> dict:
    try:
        return json.loads((Path(path) / "metrics.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def make_checkpoint(path: "str | Path", config="tiny", seed: int = 0, fp16: bool = False) -> Path:
    """A random-weight checkpoint (tiny by default: about a second) for tests of other parts."""
    from essen_ros.model.essen import build_model

    torch.manual_seed(seed)
    model = build_model(config, pretrained=False)
    return save_checkpoint(model, path, {"note": f"random weights, seed {seed}"}, fp16=fp16)
