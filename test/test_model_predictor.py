"""The Predictor API that the node, evaluation and the sim scorer share (ARCHITECTURE.md)."""
import numpy as np
import pytest
import torch

from essen_ros.model.checkpoint import load_model, make_checkpoint
from essen_ros.model.predictor import AnswerResult, GroundResult, ImageCache, Predictor, TextCache
from essen_ros.model.preprocess import preprocess


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    path = make_checkpoint(tmp_path_factory.mktemp("ck") / "tiny")
    return Predictor(load_model(path), device="cpu")


@pytest.fixture
def image():
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (120, 200, 3), dtype=np.uint8)


def test_ground_returns_a_box_in_image_pixels(predictor, image):
    text = predictor.encode_text("pick up the red cube")
    img = predictor.encode_image(image)
    assert isinstance(text, TextCache) and isinstance(img, ImageCache)
    g = predictor.ground(img, text)
    assert isinstance(g, GroundResult)
    assert 0.0 <= g.score <= 1.0 and g.found == (g.score >= predictor.threshold)
    x0, y0, x1, y1 = g.box_xyxy
    assert 0 <= x0 < x1 <= 200 and 0 <= y0 < y1 <= 120
    assert g.candidates and g.candidates[0] == (pytest.approx(g.score), g.box_xyxy)
    assert all(a[0] >= b[0] for a, b in zip(g.candidates, g.candidates[1:]))
    assert g.ms > 0


def test_threshold_argument_decides_found(predictor, image):
    text, img = predictor.encode_text("the blue ball"), predictor.encode_image(image)
    assert predictor.ground(img, text, threshold=0.0).found
    assert not predictor.ground(img, text, threshold=1.0).found


def test_answer_comes_from_the_saved_vocabulary(predictor, image):
    a = predictor.answer(predictor.encode_image(image), predictor.encode_text("what color is the cube?"))
    assert isinstance(a, AnswerResult)
    assert a.answer in predictor.answers and a.answer == a.top[0][0]
    assert a.score == pytest.approx(a.top[0][1]) and 0 < a.score <= 1
    assert sum(p for _, p in a.top) <= 1.0 + 1e-6


def test_cached_text_gives_the_same_result_as_fresh_text(predictor, image):
    img = predictor.encode_image(image)
    cached = predictor.encode_text("the small shiny thing")
    first = predictor.ground(img, cached)
    again = predictor.ground(img, predictor.encode_text("the small shiny thing"))
    assert first.score == pytest.approx(again.score) and first.box_xyxy == pytest.approx(again.box_xyxy)


def test_encode_image_uses_the_shared_preprocessing(predictor, image):
    tensor, lb = preprocess(image, predictor.input_size)
    img = predictor.encode_image(image)
    with torch.inference_mode():
        tokens, grid = predictor.model.encode_image(tensor[None])
    # The Predictor's CNN has BatchNorm folded in: equal up to float rounding.
    assert torch.allclose(tokens, img.tokens, atol=1e-4) and grid == img.grid and lb == img.letterbox


def test_long_text_is_truncated_and_flagged(predictor):
    short = predictor.encode_text("the red cube")
    long = predictor.encode_text("the red cube " * 50)
    assert not short.truncated and long.truncated
    assert long.input_ids.shape[1] == predictor.config.text.max_tokens


def test_unseen_words_become_subwords_not_unknown(predictor):
    text = predictor.encode_text("grab the glimmering orb")
    assert predictor.tokenizer.unk_token_id not in text.input_ids[0].tolist()


@pytest.mark.parametrize("bad", ["", "   "])
def test_empty_text_is_refused(predictor, bad):
    with pytest.raises(ValueError, match="empty"):
        predictor.encode_text(bad)


def test_bad_image_is_refused(predictor):
    with pytest.raises(ValueError, match="image"):
        predictor.encode_image(np.zeros((10, 10, 4), np.uint8))


def test_inference_keeps_no_autograd_state(predictor, image):
    img = predictor.encode_image(image)
    text = predictor.encode_text("a cube")
    assert not img.tokens.requires_grad and not text.tokens.requires_grad
    assert not predictor.model.training


def test_folded_batchnorm_cnn_matches_the_trained_one():
    from essen_ros.model.essen import build_model

    torch.manual_seed(0)
    model = build_model("tiny", pretrained=False)
    # Non-trivial BatchNorm statistics, as after training.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
            module.weight.data.uniform_(0.5, 1.5)
    model.eval()
    pixels = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        plain, _ = model.encode_image(pixels)
        folded, _ = model.image_tower(pixels, features=model.image_tower.fused_features())
    assert torch.allclose(plain, folded, atol=1e-4)
    assert "image_tower.features.1.conv.0.1.running_mean" in model.state_dict()  # model untouched
