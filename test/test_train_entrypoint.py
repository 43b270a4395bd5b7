"""essen-train on a toy manifest: outputs, learning, determinism, resume, Ctrl-C, torchrun."""
import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from essen_ros import train as T
from essen_ros.model.checkpoint import load_model
from essen_ros.model.config import load_model_config

REPO = Path(__file__).resolve().parent.parent
TINY_TRAIN = REPO / "config" / "train_tiny.yaml"
COLOURS = {"red": (200, 30, 30), "blue": (30, 60, 220), "green": (30, 160, 40), "yellow": (240, 230, 50)}


def make_toy_manifest(folder: Path, n_images: int = 8, seed: int = 0) -> Path:
    """Coloured squares on grey with grounding (found and not found), VQA and captions."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for n in range(n_images):
        image = Image.new("RGB", (160, 120), (120, 120, 120))
        draw = ImageDraw.Draw(image)
        placed = []
        for colour in rng.sample(list(COLOURS), 2):
            x, y, s = rng.randint(0, 120), rng.randint(0, 80), rng.randint(18, 36)
            box = [x, y, min(x + s, 159), min(y + s, 119)]
            draw.rectangle(box, fill=COLOURS[colour])
            placed.append((colour, box))
        name = f"images/{n:03d}.png"
        (folder / "images").mkdir(exist_ok=True)
        image.save(folder / name)
        objects = [{"box": b, "center": [(b[0] + b[2]) / 2, (b[1] + b[3]) / 2]} for _, b in placed]
        for i, (colour, box) in enumerate(placed):
            lines.append({"image": name, "task": "ground", "variant": "template", "text": f"the {colour} cube",
                          "box": box, "target": i, "objects": objects})
            lines.append({"image": name, "task": "vqa", "variant": "template", "text": f"is there a {colour} cube?",
                          "answer": "yes"})
            lines.append({"image": name, "task": "caption", "variant": "template",
                          "text": f"a {colour} cube on a grey floor", "match": True})
        absent = next(c for c in COLOURS if c not in [p[0] for p in placed])
        lines.append({"image": name, "task": "ground", "variant": "template", "text": f"the {absent} cube",
                      "found": False, "box": None, "target": None, "objects": objects})
        lines.append({"image": name, "task": "vqa", "variant": "template", "text": f"is there a {absent} cube?",
                      "answer": "no"})
    (folder / "annotations.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return folder


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_manifest(tmp_path_factory.mktemp("toy") / "data")


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def _train_cmd(data, out, *extra):
    return [sys.executable, "-m", "essen_ros.train", "--config", str(TINY_TRAIN), "--data", str(data),
            "--out", str(out), *extra]


def _fixed_batch(model, stage):
    config = model.config
    items = T.read_items(make_toy_manifest_cached())
    groups = T.group_by_image(items, T.stage_uses(stage))
    dataset = T.ImageTextDataset(groups, config, k=4, seed=0, augment=None)
    collate = T.Collator(model.tokenizer, config, stage, seed=0)
    return collate([dataset[(0, i)] for i in range(4)])


_CACHE = {}


def make_toy_manifest_cached():
    if "toy" not in _CACHE:
        import tempfile

        _CACHE["toy"] = make_toy_manifest(Path(tempfile.mkdtemp()) / "data")
    return _CACHE["toy"]


@pytest.mark.parametrize("tasks", [{"ground": 1.0, "vqa": 1.0}, {"itm": 1.0, "mlm": 1.0}])
def test_training_lowers_the_loss_on_a_fixed_batch(tasks):
    from essen_ros.model.essen import build_model

    torch.manual_seed(0)
    model = build_model("tiny", pretrained=False).train()
    stage = T.StageConfig(tasks=tasks, steps=1, lr=3e-3, mismatch_prob=0.5)
    batch = _fixed_batch(model, stage)
    optimizer = T.make_optimizer(model, stage)
    losses = []
    for _ in range(40):
        loss = T.compute_losses(model, batch, tasks)["total"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0], losses


def test_batches_map_boxes_into_normalised_input_coordinates():
    from essen_ros.model.essen import build_model

    model = build_model("tiny", pretrained=False)
    stage = T.StageConfig(tasks={"ground": 1.0})
    items = T.read_items(make_toy_manifest_cached())
    groups = T.group_by_image(items, T.stage_uses(stage))
    sample = T.ImageTextDataset(groups, model.config, k=10, seed=0, augment=None)[(0, 0)]
    path, group = groups[0]
    scale = min(96 / 160, 64 / 120)
    by_text = {it["text"]: it for it in group}
    for record in sample["records"]:
        item = by_text[record["text"]]
        if item["found"]:
            assert record["box"] == pytest.approx([item["box"][0] * scale / 96, item["box"][1] * scale / 64,
                                                   item["box"][2] * scale / 96, item["box"][3] * scale / 64])
        else:
            assert record["box"] is None and not record["found"]


def test_same_seed_gives_identical_weights(toy, tmp_path):
    config, model_config = T.load_train_config(TINY_TRAIN)
    for stage in config.stages:
        stage.steps = 1
    T.train(config, model_config, toy, tmp_path / "a")
    T.train(config, model_config, toy, tmp_path / "b")
    a, b = load_model(tmp_path / "a" / "model"), load_model(tmp_path / "b" / "model")
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(pa, pb), name
    config.seed = 1
    T.train(config, model_config, toy, tmp_path / "c")
    c = load_model(tmp_path / "c" / "model")
    assert not torch.equal(a.heads.itm[0].weight, c.heads.itm[0].weight)


def test_ctrl_c_keeps_a_good_checkpoint_and_resume_finishes_the_run(toy, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(_train_cmd(toy, out, "--steps", "100000"), env=_env(), cwd=REPO,
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    # Wait until training is under way (the progress bar shows throughput), then interrupt.
    seen = ""
    deadline = time.monotonic() + 120
    while "samples_s" not in seen and time.monotonic() < deadline and proc.poll() is None:
        seen += proc.stderr.read(1)
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=60)
    assert proc.returncode == 130, (seen + rest)[-2000:]
    assert "--resume" in rest
    state = json.loads((out / "last" / "train_state.json").read_text())
    assert state["stage_index"] == 0 and state["stage_step"] >= 1
    load_model(out / "last")  # intact
    assert not (out / "model").exists()  # an interrupted run ships nothing
    stopped_at = state["global_step"]

    # Resume: pretraining continues 2 more steps, then the whole finetune stage runs.
    budget = state["stage_step"] + 2
    proc = subprocess.run(_train_cmd(toy, out, "--resume", "--steps", str(budget), "--val", str(toy)),
                          env=_env(), cwd=REPO, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "samples_s" in proc.stderr  # the progress bar shows loss and throughput
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == stopped_at + 2 + budget and metrics["completed"]
    assert {"ground_acc_iou50", "found_acc", "vqa_acc"} <= set(metrics["validation"])
    model = load_model(out / "model")
    assert model.config == load_model_config(REPO / "config" / "model_tiny.yaml")
    rows = (out / "log.csv").read_text().splitlines()
    assert rows[0].startswith("stage,step,global_step")
    assert [int(r.split(",")[2]) for r in rows[1:]] == list(range(1, metrics["steps"] + 1))  # log_every 1
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "last" / "optimizer.safetensors").is_file()


def test_existing_run_is_not_overwritten_without_resume(toy, tmp_path):
    out = tmp_path / "run"
    (out / "last").mkdir(parents=True)
    assert T.main(["--config", str(TINY_TRAIN), "--data", str(toy), "--out", str(out)]) == 2


def test_resume_without_a_checkpoint_is_refused(toy, tmp_path, capsys):
    assert T.main(["--config", str(TINY_TRAIN), "--data", str(toy), "--out", str(tmp_path / "x"), "--resume"]) == 2
    assert "no resumable checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("patch, message", [
    ("batch_imgs: 3\n", "batch_imgs"),
    ("stages:\n  - name: x\n    tasks: {grounding: 1.0}\n    steps: 1\n", "grounding"),
    ("stages:\n  - name: x\n    tasks: {vqa: 1.0}\n", "needs a budget"),
    ("stages:\n  - name: x\n    tasks: {vqa: 1.0}\n    steps: 1\n    learning_rate: 1\n", "learning_rate"),
])
def test_bad_train_config_is_named_before_any_work(toy, tmp_path, capsys, patch, message):
    text = TINY_TRAIN.read_text()
    if patch.startswith("stages"):
        text = text[: text.index("stages:")] + patch
    else:
        text += patch
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("model: model_tiny.yaml", f"model: {REPO / 'config' / 'model_tiny.yaml'}"))
    out = tmp_path / "out"
    assert T.main(["--config", str(bad), "--data", str(toy), "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_impossible_model_shape_is_named_before_any_work(toy, tmp_path, capsys):
    model_yaml = tmp_path / "model.yaml"
    model_yaml.write_text((REPO / "config" / "model_tiny.yaml").read_text().replace("width: 32", "width: 33"))
    bad = tmp_path / "train.yaml"
    bad.write_text(TINY_TRAIN.read_text().replace("model: model_tiny.yaml", f"model: {model_yaml}"))
    assert T.main(["--config", str(bad), "--data", str(toy), "--out", str(tmp_path / "o")]) == 2
    assert "fusion.width" in capsys.readouterr().err


@pytest.mark.parametrize("flag, value", [("--threads", "0"), ("--threads", "-3"), ("--steps", "0"),
                                         ("--max-minutes", "0"), ("--max-minutes", "-1")])
def test_budget_and_thread_overrides_must_be_positive(toy, tmp_path, capsys, flag, value):
    """--steps 0 / --max-minutes 0 would leave a stage without any budget: it would never end."""
    out = tmp_path / "o"
    assert T.main(["--config", str(TINY_TRAIN), "--data", str(toy), "--out", str(out), flag, value]) == 2
    assert f"{flag} must be > 0" in capsys.readouterr().err
    assert not out.exists()


def test_resumed_log_keeps_the_columns_it_was_started_with(tmp_path):
    """A run started by an older version (fewer loss columns) resumes without shifting its CSV."""
    old_fields = [f for f in T.RunLog.FIELDS if f != "box"]
    (tmp_path / "log.csv").write_text(",".join(old_fields) + "\n")
    log = T.RunLog(tmp_path, resume=True)
    log.row(stage="finetune", step=1, loss="1.0", box="0.5", ground="0.7")
    log.close()
    rows = list(csv.DictReader(open(tmp_path / "log.csv")))
    assert list(rows[0]) == old_fields
    assert rows[0]["ground"] == "0.7" and rows[0]["loss"] == "1.0"


def test_init_starts_from_the_given_checkpoint_and_records_it(toy, tmp_path, tiny_checkpoint):
    from safetensors.torch import load_file

    config = tmp_path / "one_step.yaml"
    config.write_text(TINY_TRAIN.read_text().replace("model: model_tiny.yaml", f"model: {REPO / 'config' / 'model_default.yaml'}")
                      .replace("lr: 1.0e-3", "lr: 1.0e-9"))
    out = tmp_path / "run"
    assert T.main(["--config", str(config), "--data", str(toy), "--out", str(out), "--steps", "1",
                   "--init", str(tiny_checkpoint)]) == 0
    # The checkpoint's own (tiny) model was trained, not the config's default model ...
    assert load_model(out / "model").config == load_model(tiny_checkpoint).config
    # ... starting from its weights (a learning rate of 1e-9 leaves them as they were).
    before, after = load_file(str(tiny_checkpoint / "model.safetensors")), load_file(str(out / "model" / "model.safetensors"))
    assert before.keys() == after.keys()
    # (BatchNorm running statistics are buffers, updated by any forward in train mode.)
    weights = [k for k in before if "running_" not in k and "num_batches" not in k]
    assert weights and all(torch.allclose(before[k].float(), after[k].float(), atol=1e-4) for k in weights)
    assert json.loads((out / "model" / "metrics.json").read_text())["init"] == str(tiny_checkpoint)


@pytest.mark.parametrize("extra, message", [
    (["--init", "{tmp}/not-a-checkpoint"], "checkpoint not found"),
    (["--init", "{tmp}", "--resume"], "exclude each other"),
    (["--init", "{tmp}/broken"], "bad config.yaml"),
])
def test_bad_init_is_refused_before_any_work(toy, tmp_path, capsys, tiny_checkpoint, extra, message):
    broken = tmp_path / "broken"                       # a checkpoint whose config.yaml does not parse
    shutil.copytree(tiny_checkpoint, broken)
    (broken / "config.yaml").write_text("kind: [two_tower\n  input_size: {\n")
    out = tmp_path / "o"
    extra = [e.replace("{tmp}", str(tmp_path)) for e in extra]
    assert T.main(["--config", str(TINY_TRAIN), "--data", str(toy), "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "config").glob("train_*.yaml")))
def test_committed_train_configs_load(name):
    config, model_config = T.load_train_config(REPO / "config" / name)
    assert config.stages and model_config.input_size


def test_missing_data_folder_is_named(tmp_path, capsys):
    assert T.main(["--config", str(TINY_TRAIN), "--data", str(tmp_path / "nodata"), "--out", str(tmp_path / "o")]) == 2
    assert "nodata" in capsys.readouterr().err


def test_torchrun_two_cpu_processes(toy, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "essen_ros.train", "--config", str(TINY_TRAIN), "--data", str(toy), "--out", str(out), "--steps", "2"]
    proc = subprocess.run(cmd, env=_env(), cwd=REPO, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["steps"] == 4
    load_model(out / "model")


def test_vqa_answers_outside_the_vocabulary_are_left_out(tmp_path):
    folder = make_toy_manifest(tmp_path / "data", n_images=2)
    with open(folder / "annotations.jsonl", "a") as f:
        f.write(json.dumps({"image": "images/000.png", "task": "vqa", "variant": "template",
                            "text": "what is it?", "answer": "banana"}) + "\n")
    items = T.read_items(folder)
    groups = T.group_by_image(items, {"vqa"}, load_model_config("tiny").answers)
    answers = [it["answer"] for _, group in groups for it in group]
    assert "banana" not in answers and set(answers) == {"yes", "no"}


@pytest.mark.parametrize("zoom", ["in", "out"])
def test_scale_jitter_moves_boxes_with_the_pixels_and_never_flips(zoom):
    import numpy as np

    image = np.full((120, 160, 3), 100, np.uint8)
    image[40:70, 90:130] = 255  # the object, right of centre
    item = {"task": "ground", "box": [90, 40, 130, 70], "objects": [{"box": [90, 40, 130, 70]}]}
    config = T.AugmentConfig(color=0.0, probability=1.0, zoom_in=0.8 if zoom == "in" else 1.0,
                             zoom_out=1.3 if zoom == "out" else 1.0)
    for seed in range(5):
        out, dx, dy = T.Augmenter(config)(image, [item], random.Random(seed))
        x0, y0, x1, y1 = (int(round(v)) for v in (90 + dx, 40 + dy, 130 + dx, 70 + dy))
        assert np.all(out[y0:y1, x0:x1] == 255)
        assert (out == 255).all(axis=2).sum() == 30 * 40  # whole object kept, nothing mirrored
