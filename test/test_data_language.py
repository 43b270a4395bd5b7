"""Language generation: every label is what the scene graph says (no rendering needed)."""
import re

import numpy as np

from essen_ros.data import language
from essen_ros.data.language import LanguageGenerator, execute, generate, resolve
from essen_ros.data.scene import relations, sample_scene
from essen_ros.data.vocab import ANSWERS, COLORS, MATERIALS, SHAPES, SIZES

# Every way the generator may say an attribute value, for an independent check of the text.
WORDS = {
    "shape": {v: {w for w, _ in language.SHAPE_NOUNS[v]} for v in SHAPES},
    "color": {v: {w for w, _ in language.COLOR_WORDS[v]} for v in COLORS},
    "material": {v: {w for w, _ in language.MATERIAL_WORDS[v]} for v in MATERIALS},
    "size": {v: {w for w, _ in language.SIZE_WORDS[v]} for v in SIZES},
}
for value in SHAPES:
    WORDS["shape"][value] |= {language.SHAPE_PLURALS[w] for w in set(WORDS["shape"][value])}


def scenes_with_texts(count=60, seed=0):
    for i in range(count):
        rng = np.random.default_rng([seed, i])
        scene = sample_scene(rng)
        # Hide a few objects, as the renderer does for mostly occluded ones.
        visible = [bool(rng.random() > 0.15) for _ in scene.objects]
        rels = relations(scene.objects, scene.camera)
        yield scene, visible, rels, generate(scene.objects, visible, rels, rng)


def test_referring_expressions_pick_exactly_their_visible_target_and_negatives_nothing():
    checked = negatives = relational = 0
    for scene, visible, rels, texts in scenes_with_texts():
        for t in (t for t in texts if t["task"] == "ground"):
            found = resolve(t["program"]["ref"], scene.objects, rels)
            if t.get("found", True) is False:
                assert found == [], t["text"]
                negatives += 1
            else:
                assert found == [t["target_scene_index"]], t["text"]
                assert visible[t["target_scene_index"]], "hidden object used as a target"
                relational += t["variant"] == "relational"
            checked += 1
    assert checked > 200 and negatives > 30 and relational > 30


def test_relational_expressions_need_their_relation():
    for scene, visible, rels, texts in scenes_with_texts(30):
        for t in texts:
            reference = t["program"].get("ref")
            if t["task"] == "ground" and t.get("found", True) and reference["relation"]:
                without = dict(reference, relation=None, anchor=None)
                assert len(resolve(without, scene.objects, rels)) != 1, t["text"]
                anchor = resolve(reference["anchor"], scene.objects, rels)
                assert len(anchor) == 1 and visible[anchor[0]], t["text"]


def test_question_answers_recomputed_from_the_scene_graph_agree():
    kinds = set()
    for scene, visible, rels, texts in scenes_with_texts():
        for t in (t for t in texts if t["task"] == "vqa"):
            assert t["answer"] in ANSWERS
            assert execute(t["program"], scene.objects, rels) == t["answer"], t["text"]
            kinds.add((t["kind"], t["answer"] if t["kind"] in ("exist", "compare") else ""))
            if t["kind"] == "count":
                # Counting must not depend on an object the camera hardly sees.
                matching = [i for i, o in enumerate(scene.objects)
                            if language.matches(o, t["program"]["ref"]["attrs"])]
                assert all(visible[i] for i in matching), t["text"]
    assert {("attribute", ""), ("count", ""), ("exist", "yes"), ("exist", "no"),
            ("compare", "yes"), ("compare", "no")} <= kinds


def test_captions_match_label_is_the_scene_graph_truth_and_both_labels_occur():
    labels = []
    for scene, visible, rels, texts in scenes_with_texts(40):
        for t in (t for t in texts if t["task"] == "caption"):
            assert execute(t["program"], scene.objects, rels) is t["match"], t["text"]
            labels.append(t["match"])
    assert labels.count(True) > 20 and labels.count(False) > 20


def test_text_names_every_attribute_of_a_plain_reference():
    for scene, visible, rels, texts in scenes_with_texts(30):
        for t in texts:
            if t["task"] != "ground" or t["variant"] != "template":
                continue
            words = set(re.findall(r"[a-z]+", t["text"]))
            for attribute, value in t["program"]["ref"]["attrs"].items():
                assert words & WORDS[attribute][value], (t["text"], attribute, value)


def test_wording_is_varied():
    texts = [t["text"] for _, _, _, ts in scenes_with_texts(60) for t in ts]
    joined = " ".join(texts)
    for word in ("block", "ball", "grey", "shiny", "matte", "tiny", "big", "please", "grab",
                 "to the left of", "behind", "how many", "what color", "made of", "is there",
                 "same"):
        assert word in joined, word
    assert len(set(texts)) > 0.9 * len(texts)


def test_mix_per_image_is_balanced():
    for scene, visible, rels, texts in scenes_with_texts(20):
        if sum(visible) < 3:
            continue
        tasks = [t["task"] for t in texts]
        assert tasks.count("ground") >= 4 and tasks.count("vqa") >= 6 and tasks.count("caption") >= 1


def test_no_visible_object_gives_no_targets():
    rng = np.random.default_rng(3)
    scene = sample_scene(rng, n_objects=4)
    rels = relations(scene.objects, scene.camera)
    gen = LanguageGenerator(scene.objects, [False] * 4, rels, rng)
    assert all(t.get("found") is False for t in gen.ground_items(6, 1))
    assert gen.attribute_question() is None
