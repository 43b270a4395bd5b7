"""Forward/backward of every head on every model kind (tiny configs), config strictness."""
import copy

import pytest
import torch

from essen_ros.model.config import ConfigError, load_model_config, model_config_from_dict, read_yaml
from essen_ros.model.essen import build_model
from essen_ros.model.heads import grounding_loss
from essen_ros.paths import config_path

TINY = read_yaml(config_path("model_tiny.yaml"))


def tiny(**overrides):
    data = copy.deepcopy(TINY)
    for section, values in overrides.items():
        if isinstance(values, dict):
            data.setdefault(section, {}).update(values)
        else:
            data[section] = values
    return model_config_from_dict(data)


KINDS = {
    "two_tower_coattention": tiny(),
    "two_tower_merged": tiny(fusion={"kind": "merged"}),
    "one_tower": tiny(kind="one_tower", one_tower={"width": 32, "depth": 2, "heads": 2, "ffn": 64, "patch": 8}),
}


def _batch(model, n_images=2, texts_per_image=2):
    torch.manual_seed(0)
    w, h = model.config.input_size
    pixels = torch.randn(n_images, 3, h, w)
    ids = torch.randint(1000, 3000, (n_images * texts_per_image, 7))
    ids[:, 0], ids[:, -1] = 101, 102
    mask = torch.ones_like(ids)
    mask[0, -2:] = 0  # one padded text
    image_index = torch.arange(n_images).repeat_interleave(texts_per_image)
    return pixels, ids, mask, image_index


@pytest.mark.parametrize("kind", KINDS)
def test_every_head_runs_forward_and_backward(kind):
    model = build_model(KINDS[kind], pretrained=False).train()
    pixels, ids, mask, image_index = _batch(model)
    out = model(pixels, ids, mask, image_index)
    n = ids.shape[0]
    assert out["pooled"].shape == (n, 2 * model.config.width)
    itm = model.heads.itm(out["pooled"])
    vqa = model.heads.vqa(out["pooled"])
    mlm = model.heads.mlm(out["text"])
    cells, boxes, found = model.ground(out)
    h, w = out["grid"]
    assert itm.shape == (n, 2)
    assert vqa.shape == (n, len(model.config.answers))
    assert mlm.shape == (n, ids.shape[1], model.config.text.vocab_size)
    assert cells.shape == (n, h * w) and boxes.shape == (n, h * w, 4) and found.shape == (n,)
    assert torch.all(boxes[..., 2] > boxes[..., 0]) and torch.all(boxes[..., 3] > boxes[..., 1])
    target = torch.tensor([[0.1, 0.2, 0.4, 0.6]] * n)
    found_flags = torch.tensor([True, False] * (n // 2))
    loss = (itm.logsumexp(-1).mean() + vqa.logsumexp(-1).mean() + mlm.logsumexp(-1).mean()
            + grounding_loss(cells, boxes, found, target, found_flags, out["grid"]))
    loss.backward()
    for name in ("itm", "vqa", "mlm", "grounding", "pooler"):
        grads = [p.grad for p in getattr(model.heads, name).parameters() if p.requires_grad]
        assert grads and all(g is not None and torch.isfinite(g).all() for g in grads), name
    encoder = model.image_tower if kind != "one_tower" else model.patches
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.parameters())


def test_cnn_runs_once_per_image_however_many_texts():
    model = build_model(KINDS["two_tower_coattention"], pretrained=False).eval()
    calls = []
    model.image_tower.register_forward_hook(lambda mod, inp, out: calls.append(inp[0].shape[0]))
    pixels, ids, mask, image_index = _batch(model, n_images=2, texts_per_image=3)
    model(pixels, ids, mask, image_index)
    assert calls == [2]


def test_pairs_do_not_leak_into_each_other():
    """Fusing texts with their images in one batch equals fusing each pair alone."""
    model = build_model(KINDS["two_tower_coattention"], pretrained=False).eval()
    pixels, ids, mask, image_index = _batch(model)
    with torch.no_grad():
        together = model(pixels, ids, mask, image_index)["pooled"]
        for k in range(ids.shape[0]):
            alone = model(pixels[image_index[k]][None], ids[k:k + 1], mask[k:k + 1])["pooled"]
            assert torch.allclose(alone[0], together[k], atol=1e-5)


def test_mlm_decoder_is_tied_to_word_embeddings():
    model = build_model(KINDS["two_tower_coattention"], pretrained=False)
    assert model.heads.mlm.decoder.weight is model.text_tower.word_embeddings.weight


def test_default_model_stays_under_25M_parameters():
    model = build_model("default", pretrained=False)
    counts = model.parameter_counts()
    assert counts["total"] < 25e6
    assert set(counts) >= {"image_tower", "text_tower", "fusion", "heads"}
    assert model.config.input_size == [320, 240]


def test_default_model_grid_is_10_by_8():
    model = build_model("default", pretrained=False).eval()
    with torch.no_grad():
        _, grid = model.encode_image(torch.zeros(1, 3, 240, 320))
    assert grid == (8, 10)


def test_one_tower_baseline_is_parameter_matched_to_the_default():
    two = build_model("default", pretrained=False).parameter_counts()["total"]
    one = build_model("onetower", pretrained=False).parameter_counts()["total"]
    assert abs(one - two) / two < 0.10


def test_pretrained_towers_load_the_shipped_weights():
    from essen_ros.model.towers import find_minilm_folder, find_mobilenet_weights

    assert find_mobilenet_weights() is not None and find_minilm_folder() is not None
    config = tiny(image={"width_mult": 1.0, "cut": 4, "pretrained": True},
                  text={"init": "pretrained", "hidden_size": 384, "layers": 1, "heads": 12, "ffn": 1536})
    torch.manual_seed(1)
    a = build_model(config, pretrained=True)
    torch.manual_seed(2)
    b = build_model(config, pretrained=True)
    scratch = build_model(config, pretrained=False)
    # Whatever the seed, the towers hold the same (shipped) weights, unlike a random init.
    assert torch.equal(a.image_tower.features[0][0].weight, b.image_tower.features[0][0].weight)
    assert torch.equal(a.text_tower.word_embeddings.weight, b.text_tower.word_embeddings.weight)
    assert not torch.equal(a.image_tower.features[0][0].weight, scratch.image_tower.features[0][0].weight)
    assert not torch.equal(a.text_tower.word_embeddings.weight, scratch.text_tower.word_embeddings.weight)


def test_unknown_config_key_is_named():
    with pytest.raises(ConfigError, match="fusion.widht"):
        tiny(fusion={"widht": 64})
    with pytest.raises(ConfigError, match="'colour'"):
        model_config_from_dict({**TINY, "colour": 1})


def test_width_not_divisible_by_heads_is_refused():
    with pytest.raises(ConfigError, match="fusion.width.*divisible"):
        tiny(fusion={"width": 30, "heads": 4})
    with pytest.raises(ConfigError, match="one_tower.width"):
        tiny(one_tower={"width": 50, "heads": 6})


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_model_config(tmp_path / "nope.yaml")


def test_shipped_model_configs_are_valid():
    for name in ("default", "tiny", "onetower", "merged"):
        load_model_config(name)


def test_cells_follow_the_cnn_stride_when_the_input_is_not_a_multiple():
    """240 px at stride 32 gives 8 rows of 32 px (the last one partly padding), not 30 px rows."""
    from essen_ros.model.heads import target_cells

    model = build_model(tiny(input_size=[96, 72]), pretrained=False).eval()  # tiny: stride 8 -> 9 rows
    with torch.no_grad():
        _, grid = model.encode_image(torch.zeros(1, 3, 72, 96))
    assert tuple(grid) == (9, 12) and grid.cell_h == pytest.approx(8 / 72) and grid.cell_w == pytest.approx(8 / 96)
    # A box centred at pixel (20, 60) lies in column 20 // 8 = 2, row 60 // 8 = 7.
    box = torch.tensor([[18 / 96, 58 / 72, 22 / 96, 62 / 72]])
    assert int(target_cells(box, grid)) == 7 * 12 + 2


def test_frozen_blocks_get_no_gradient_and_keep_their_batchnorm_statistics():
    model = build_model(tiny(image={"freeze_blocks": 2}), pretrained=False).train()
    frozen, trained = model.image_tower.features[:2], model.image_tower.features[2:]
    assert all(not m.training for block in frozen for m in block.modules())
    before = [b.clone() for b in frozen.buffers()]
    pixels, ids, mask, image_index = _batch(model)
    out = model(pixels, ids, mask, image_index)
    out["pooled"].sum().backward()
    assert all(p.grad is None for p in frozen.parameters())
    assert any(p.grad is not None for p in trained.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, frozen.buffers()))
