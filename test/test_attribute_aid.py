"""The dense attribute aid used in fine-tuning: scene-graph attributes of every object,
predicted from the image token at the object's cell before fusion."""
from __future__ import annotations

import json

import pytest
import torch

from essen_ros import train as T
from essen_ros.model.heads import ATTRIBUTE_GROUPS, attribute_targets

from test_train_entrypoint import make_toy_manifest


@pytest.fixture(scope="module")
def toy_with_attributes(tmp_path_factory):
    """The training tests' toy squares, with each object's colour written into the scene."""
    folder = make_toy_manifest(tmp_path_factory.mktemp("attr") / "data", n_images=4)
    lines = [json.loads(line) for line in (folder / "annotations.jsonl").read_text().splitlines()]
    for line in lines:
        if line["task"] != "ground":
            continue
        # colour of each object from the texts that name it ("the red cube" -> target)
        colours = {l["target"]: l["text"].split()[1] for l in lines
                   if l["image"] == line["image"] and l["task"] == "ground" and l.get("target") is not None}
        line["objects"] = [dict(o, color=colours.get(i), shape="cube", material="rubber", size="small")
                           for i, o in enumerate(line["objects"])]
    (folder / "annotations.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines))
    return folder


def test_attribute_targets_index_each_group_and_mark_unknown_as_ignored():
    rows = attribute_targets([{"color": "cyan", "shape": "sphere", "material": "metal", "size": "large"},
                              {"color": "pink", "shape": "cube"}])
    colors, shapes = ATTRIBUTE_GROUPS[0][1], ATTRIBUTE_GROUPS[1][1]
    assert rows[0] == [colors.index("cyan"), shapes.index("sphere"), 1, 1]
    assert rows[1] == [-100, shapes.index("cube"), -100, -100]


def test_dataset_gives_every_object_box_in_normalised_input_coordinates(toy_with_attributes):
    from essen_ros.model.essen import build_model

    model = build_model("tiny", pretrained=False)
    stage = T.StageConfig(tasks={"ground": 1.0, "attr": 1.0})
    groups = T.group_by_image(T.read_items(toy_with_attributes), T.stage_uses(stage))
    sample = T.ImageTextDataset(groups, model.config, k=2, seed=0, augment=None)[(0, 0)]
    objects = next(it["objects"] for it in groups[0][1] if it.get("objects"))
    scale = min(96 / 160, 64 / 120)  # tiny model input 96x64, toy images 160x120
    assert len(sample["obj_boxes"]) == len(objects) == 2
    for box, obj, attrs in zip(sample["obj_boxes"], objects, sample["obj_attrs"]):
        assert box == pytest.approx([obj["box"][0] * scale / 96, obj["box"][1] * scale / 64,
                                     obj["box"][2] * scale / 96, obj["box"][3] * scale / 64])
        assert attrs[0] == ATTRIBUTE_GROUPS[0][1].index(obj["color"])


def test_object_cells_are_the_centre_cell_and_the_cells_inside_the_box():
    from essen_ros.model.heads import Grid, object_cell_mask

    grid = Grid(4, 4)  # cells 0.25 wide, centres at 0.125, 0.375, ...
    boxes = torch.tensor([[0.05, 0.05, 0.20, 0.20],    # tiny: holds no cell centre, centre cell 0
                          [0.30, 0.30, 0.80, 0.45]])   # wide: centres (0.375|0.625, 0.375) inside
    mask = object_cell_mask(boxes, grid)
    assert mask[0].nonzero().flatten().tolist() == [0]
    assert mask[1].nonzero().flatten().tolist() == [5, 6]


def test_object_box_loss_pairs_each_row_only_with_objects_of_its_own_image():
    from essen_ros.model.heads import Grid, object_box_loss

    grid = Grid(2, 2)
    target = torch.tensor([[0.0, 0.0, 0.5, 0.5]])               # one object, image 1, cell 0
    boxes = torch.zeros(2, 4, 4)
    boxes[1, 0] = target[0]                                      # row 1 (image 1) regresses it exactly
    boxes[0, 0] = torch.tensor([0.5, 0.5, 1.0, 1.0])             # row 0 (image 0) is wrong, but not paired
    loss = object_box_loss(boxes, torch.tensor([0, 1]), torch.tensor([1]), target, grid)
    assert float(loss) == pytest.approx(0.0, abs=1e-6)
    loss = object_box_loss(boxes, torch.tensor([1, 1]), torch.tensor([1]), target, grid)
    assert float(loss) > 0.5
    assert float(object_box_loss(boxes, torch.tensor([0, 0]), torch.tensor([1]), target, grid)) == 0.0


@pytest.mark.parametrize("aid", ["attr", "box"])
def test_aid_loss_is_computed_and_falls_on_a_fixed_batch(toy_with_attributes, aid):
    from essen_ros.model.essen import build_model

    torch.manual_seed(0)
    model = build_model("tiny", pretrained=False).train()
    stage = T.StageConfig(tasks={"ground": 1.0, aid: 1.0}, steps=1, lr=3e-3)
    groups = T.group_by_image(T.read_items(toy_with_attributes), T.stage_uses(stage))
    dataset = T.ImageTextDataset(groups, model.config, k=3, seed=0, augment=None)
    batch = T.Collator(model.tokenizer, model.config, stage, seed=0)([dataset[(0, i)] for i in range(4)])
    assert batch["obj_attrs"].shape == (8, 4) and batch["obj_image"].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    optimizer = T.make_optimizer(model, stage)
    losses = []
    for _ in range(30):
        loss = T.compute_losses(model, batch, {"ground": 0.0, aid: 1.0})[aid]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0], losses
