"""Checkpoint folders: round trip, fp16 shipping, no unpickling, clear errors, atomic saves."""
import pickle

import pytest
import torch

from essen_ros.model import checkpoint as ckpt
from essen_ros.model.checkpoint import CheckpointError, load_model, make_checkpoint, save_checkpoint
from essen_ros.model.essen import build_model


def _outputs(model):
    torch.manual_seed(0)
    w, h = model.config.input_size
    ids = torch.tensor([[101, 2417, 7592, 102], [101, 2003, 2045, 102]])
    with torch.no_grad():
        out = model.eval()(torch.randn(1, 3, h, w), ids, torch.ones_like(ids), torch.tensor([0, 0]))
        cells, boxes, found = model.ground(out)
        return [out["pooled"], model.heads.vqa(out["pooled"]), model.heads.mlm(out["text"]), cells, boxes, found]


@pytest.mark.parametrize("config", ["tiny", {"kind": "one_tower", "input_size": [64, 48], "text": {"init": "scratch"},
                                             "one_tower": {"width": 32, "depth": 1, "heads": 2, "ffn": 64}}])
def test_round_trip_gives_identical_outputs(tmp_path, config):
    torch.manual_seed(3)
    model = build_model(config, pretrained=False)
    save_checkpoint(model, tmp_path / "ck", {"steps": 7})
    loaded = load_model(tmp_path / "ck")
    for a, b in zip(_outputs(model), _outputs(loaded)):
        assert torch.equal(a, b)
    assert loaded.tokenizer("red cube")["input_ids"] == model.tokenizer("red cube")["input_ids"]
    assert loaded.config == model.config
    assert not loaded.training


def test_folder_holds_the_documented_files(tmp_path):
    path = make_checkpoint(tmp_path / "ck")
    names = {p.name for p in path.iterdir()}
    assert {"config.yaml", "model.safetensors", "tokenizer", "answers.json", "metrics.json"} <= names
    assert not any(name.startswith(".") for name in names)
    assert not list(tmp_path.glob(".*"))  # no temporary folder left behind


def test_fp16_weights_load_as_fp32_with_close_outputs(tmp_path):
    torch.manual_seed(0)
    model = build_model("tiny", pretrained=False)
    save_checkpoint(model, tmp_path / "half", fp16=True)
    save_checkpoint(model, tmp_path / "full")
    assert (tmp_path / "half" / "model.safetensors").stat().st_size < 0.6 * (tmp_path / "full" / "model.safetensors").stat().st_size
    loaded = load_model(tmp_path / "half")
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    for a, b in zip(_outputs(model), _outputs(loaded)):
        assert torch.allclose(a, b, atol=5e-2, rtol=5e-2)


def test_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(CheckpointError, match="nowhere"):
        load_model(tmp_path / "nowhere")


def test_incomplete_checkpoint_names_the_missing_file(tmp_path):
    path = make_checkpoint(tmp_path / "ck")
    (path / "answers.json").unlink()
    with pytest.raises(CheckpointError, match="answers.json"):
        load_model(path)


def test_corrupt_weights_are_a_clear_error(tmp_path):
    path = make_checkpoint(tmp_path / "ck")
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_model(path)


def test_pickled_weights_are_never_unpickled(tmp_path):
    path = make_checkpoint(tmp_path / "ck")
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (path / "model.safetensors").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(CheckpointError):
        load_model(path)
    assert not marker.exists()


def test_config_with_unknown_key_is_a_clear_error(tmp_path):
    path = make_checkpoint(tmp_path / "ck")
    (path / "config.yaml").write_text((path / "config.yaml").read_text() + "mystery: 1\n")
    with pytest.raises(CheckpointError, match="mystery"):
        load_model(path)


def test_weights_that_do_not_fit_the_config_are_refused(tmp_path):
    make_checkpoint(tmp_path / "a")
    make_checkpoint(tmp_path / "b", config={"input_size": [64, 48], "image": {"width_mult": 0.25, "cut": 4, "pretrained": False},
                                            "text": {"init": "scratch", "hidden_size": 32, "layers": 1, "heads": 2, "ffn": 64},
                                            "fusion": {"width": 32, "depth": 1, "heads": 2, "ffn": 64}})
    (tmp_path / "a" / "model.safetensors").write_bytes((tmp_path / "b" / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="do not fit"):
        load_model(tmp_path / "a")


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = make_checkpoint(tmp_path / "ck", seed=1)
    before = (path / "model.safetensors").read_bytes()
    model = build_model("tiny", pretrained=False)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(model.tokenizer, "save_pretrained", broken)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(model, path)
    assert (path / "model.safetensors").read_bytes() == before
    load_model(path)
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]  # temporary folder cleaned up


def test_make_checkpoint_is_quick_and_seeded(tmp_path):
    import time

    start = time.monotonic()
    make_checkpoint(tmp_path / "a", seed=5)
    assert time.monotonic() - start < 10
    make_checkpoint(tmp_path / "b", seed=5)
    from safetensors.torch import load_file

    a, b = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert ckpt.read_metrics(tmp_path / "a")["note"].startswith("random weights")
