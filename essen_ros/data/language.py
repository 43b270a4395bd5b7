"""Language from a scene graph, with exact labels: referring expressions, questions, captions.

Every text comes with a small *program* (plain JSON) saying what it means, and the label is
computed from the program on the scene graph, never guessed from the words:

* reference  R = {"attrs": {attribute: value, ...}, "relation": None | "left" | ...,
                  "anchor": R | None}
  `resolve(R, objects, rels)` lists the objects R picks out: those with all `attrs`, and, with a
  relation, only those that are `relation` of the anchor (which must itself resolve to one).
* ground    {"type": "refer", "ref": R}                         -> target / found
* vqa       {"type": "query", "attribute": a, "ref": R}         -> attribute value
            {"type": "count", "ref": R}                         -> "0".."10"
            {"type": "exist", "ref": R}                         -> yes / no
            {"type": "compare", "attribute": a, "refs": [R1, R2]}-> yes / no
* caption   {"type": "caption", "clauses": [...]}               -> match (all clauses hold)
  clauses: {"exist": R} (something matches R), {"count": R, "n": k}, {"absent": R}.

`execute(program, objects, rels)` recomputes any label; tests use it to check every item.

Objects that the camera barely sees (`visible` False) are never targets or referents, and
no text is generated whose label would depend on them (e.g. no count of red things while a
hidden red thing exists): the label must be right for what the image shows.

Wording is deliberately varied (synonyms, command verbs, politeness, several phrasings per
relation and question type) while the plain CLEVR style stays in the mix.
"""
from __future__ import annotations

import itertools

import numpy as np

from essen_ros.data.vocab import ATTRIBUTES

ATTRIBUTE_ORDER = ("size", "color", "material", "shape")   # CLEVR's adjective order
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
                "nine", "ten")

# --- synonyms -------------------------------------------------------------------------------
# (word, weight): the plain CLEVR word is the most frequent so that style stays well covered.
SHAPE_NOUNS = {
    "cube": [("cube", 6), ("block", 3), ("box", 2)],
    "sphere": [("sphere", 6), ("ball", 4)],
    "cylinder": [("cylinder", 8), ("tube", 1), ("can", 1)],
    None: [("thing", 5), ("object", 5), ("item", 2)],
}
SHAPE_PLURALS = {"cube": "cubes", "block": "blocks", "box": "boxes", "sphere": "spheres",
                 "ball": "balls", "cylinder": "cylinders", "tube": "tubes", "can": "cans",
                 "thing": "things", "object": "objects", "item": "items"}
SIZE_WORDS = {"small": [("small", 6), ("tiny", 2), ("little", 2)],
              "large": [("large", 6), ("big", 4), ("huge", 1)]}
COLOR_WORDS = {c: [(c, 1)] for c in ATTRIBUTES["color"]}
COLOR_WORDS["gray"] = [("gray", 3), ("grey", 2)]
MATERIAL_WORDS = {"metal": [("metal", 5), ("metallic", 3), ("shiny", 3), ("steel", 1)],
                  "rubber": [("rubber", 5), ("matte", 3), ("rubbery", 1)]}
MATERIAL_POSTFIX = {"metal": ["made of metal", "made of steel", "that is metallic",
                              "that is shiny", "that is made of metal"],
                    "rubber": ["made of rubber", "that is rubber", "that is matte",
                               "that is made of rubber"]}

RELATION_PHRASES = {
    "left": [("left of", 4), ("to the left of", 4), ("on the left side of", 2),
             ("on the left of", 1), ("that is left of", 2), ("that is to the left of", 2),
             ("which is left of", 1), ("located to the left of", 1)],
    "right": [("right of", 4), ("to the right of", 4), ("on the right side of", 2),
              ("on the right of", 1), ("that is right of", 2), ("that is to the right of", 2),
              ("which is right of", 1), ("located to the right of", 1)],
    "front": [("in front of", 8), ("that is in front of", 3), ("which is in front of", 1),
              ("located in front of", 1)],
    "behind": [("behind", 8), ("that is behind", 3), ("which is behind", 1),
               ("further back than", 2), ("farther back than", 1), ("in back of", 1)],
}

COMMAND_VERBS = [("pick up", 4), ("grab", 3), ("point at", 4), ("point to", 2), ("find", 4),
                 ("locate", 3), ("show me", 3), ("get", 2), ("fetch", 2), ("hand me", 2),
                 ("touch", 2), ("look at", 2), ("select", 2), ("take", 1), ("give me", 1),
                 ("bring me", 1), ("reach for", 1), ("highlight", 1), ("identify", 1),
                 ("mark", 1), ("tap", 1), ("go to", 1), ("focus on", 1)]
COMMAND_FORMS = [("{np}", 5), ("{verb} {np}", 12), ("please {verb} {np}", 3),
                 ("{verb} {np} please", 2), ("{verb} {np}, please", 1),
                 ("could you {verb} {np}?", 2), ("can you {verb} {np}?", 2),
                 ("would you {verb} {np}?", 1), ("i need you to {verb} {np}", 2),
                 ("i want you to {verb} {np}", 1), ("kindly {verb} {np}", 1),
                 ("robot, {verb} {np}", 1), ("now {verb} {np}", 1), ("go ahead and {verb} {np}", 1),
                 ("where is {np}?", 3), ("where's {np}?", 1), ("which one is {np}?", 1),
                 ("i am looking for {np}", 1), ("i'd like {np}", 1), ("can i have {np}?", 1),
                 ("show {np}", 1), ("put your finger on {np}", 1), ("which object is {np}?", 1),
                 ("please, {verb} {np}", 1), ("{verb} {np} for me", 1), ("help me {verb} {np}", 1)]


def _weighted(rng, options):
    """Pick from [(word, weight), ...] by weight, or uniformly from a plain list."""
    if not isinstance(options[0], tuple):
        return options[int(rng.integers(len(options)))]
    words = [w for w, weight in options]
    weights = np.array([weight for _, weight in options], float)
    return words[int(rng.choice(len(words), p=weights / weights.sum()))]


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


# --- semantics ------------------------------------------------------------------------------
def matches(obj, attrs: dict) -> bool:
    return all(getattr(obj, name) == value for name, value in attrs.items())


def ref(attrs: dict, relation: str | None = None, anchor: dict | None = None) -> dict:
    return {"attrs": dict(attrs), "relation": relation, "anchor": anchor}


def resolve(reference: dict, objects, rels) -> list:
    """Indices of the objects a reference picks out (all of them, visible or not)."""
    chosen = [i for i, o in enumerate(objects) if matches(o, reference["attrs"])]
    if reference.get("relation"):
        anchors = resolve(reference["anchor"], objects, rels)
        if len(anchors) != 1:
            return []
        related = set(rels[reference["relation"]][anchors[0]])
        chosen = [i for i in chosen if i in related]
    return chosen


def _reference_key(reference):
    if reference is None:
        return None
    return (tuple(sorted(reference["attrs"].items())), reference.get("relation"),
            _reference_key(reference.get("anchor")))


def execute(program: dict, objects, rels):
    """The label a program has on this scene: target index / None, answer word, match."""
    kind = program["type"]
    if kind == "refer":
        found = resolve(program["ref"], objects, rels)
        return found[0] if len(found) == 1 else None
    if kind == "query":
        found = resolve(program["ref"], objects, rels)
        if len(found) != 1:
            raise ValueError("query on a reference that is not unique")
        return getattr(objects[found[0]], program["attribute"])
    if kind == "count":
        return str(len(resolve(program["ref"], objects, rels)))
    if kind == "exist":
        return "yes" if resolve(program["ref"], objects, rels) else "no"
    if kind == "compare":
        a, b = (resolve(r, objects, rels) for r in program["refs"])
        if len(a) != 1 or len(b) != 1:
            raise ValueError("compare on references that are not unique")
        same = getattr(objects[a[0]], program["attribute"]) == getattr(objects[b[0]], program["attribute"])
        return "yes" if same else "no"
    if kind == "caption":
        return all(_clause_holds(c, objects, rels) for c in program["clauses"])
    raise ValueError(f"unknown program type {kind!r}")


def _clause_holds(clause, objects, rels) -> bool:
    if "exist" in clause:
        return bool(resolve(clause["exist"], objects, rels))
    if "absent" in clause:
        return not resolve(clause["absent"], objects, rels)
    if "count" in clause:
        return len(resolve(clause["count"], objects, rels)) == clause["n"]
    raise ValueError(f"unknown caption clause {clause}")


def involved(reference: dict, objects, rels) -> set:
    """Every object whose identity the reference's label depends on (matches of each part)."""
    found = set(resolve(reference, objects, rels))
    found |= {i for i, o in enumerate(objects) if matches(o, reference["attrs"])}
    if reference.get("anchor"):
        found |= involved(reference["anchor"], objects, rels)
    return found


# --- wording --------------------------------------------------------------------------------
def noun_phrase(rng, attrs: dict, det: str | None = "the", plural: bool = False) -> str:
    """Words for a set of attributes, e.g. 'the big shiny ball' or 'the cube made of rubber'."""
    shape = attrs.get("shape")
    noun = _weighted(rng, SHAPE_NOUNS[shape])
    words = []
    if "size" in attrs:
        words.append(_weighted(rng, SIZE_WORDS[attrs["size"]]))
    postfix = ""
    if "color" in attrs:
        color = _weighted(rng, COLOR_WORDS[attrs["color"]])
        if not plural and rng.random() < 0.1:
            postfix = " " + str(rng.choice(["that is {c}", "colored {c}", "in {c}",
                                             "with a {c} color", "which is {c}"])).format(c=color)
        else:
            words.append(color)
    if "material" in attrs:
        if rng.random() < 0.15 and not plural and not postfix:
            postfix = " " + str(_weighted(rng, MATERIAL_POSTFIX[attrs["material"]]))
        else:
            words.append(_weighted(rng, MATERIAL_WORDS[attrs["material"]]))
    if shape is None and words and not plural and rng.random() < 0.25:
        noun = "one"
    if plural:
        noun = SHAPE_PLURALS[noun]
    text = " ".join(words + [noun]) + postfix
    if det == "a":
        det = _article(text)
    return f"{det} {text}" if det else text


def reference_phrase(rng, reference: dict, det="the", plural=False) -> str:
    text = noun_phrase(rng, reference["attrs"], det=det, plural=plural)
    if reference.get("relation"):
        phrase = _weighted(rng, RELATION_PHRASES[reference["relation"]])
        if plural:
            phrase = phrase.replace("that is", "that are").replace("which is", "which are")
        text = f"{text} {phrase} {reference_phrase(rng, reference['anchor'])}"
    return text


def command(rng, np_text: str) -> str:
    form = _weighted(rng, COMMAND_FORMS)
    return form.format(verb=_weighted(rng, COMMAND_VERBS), np=np_text)


ATTRIBUTE_QUESTIONS = {
    "color": ["what color is {np}?", "what colour is {np}?", "what is the color of {np}?",
              "which color is {np}?", "which colour is {np}?", "what color does {np} have?",
              "tell me the color of {np}", "{np} is what color?", "what is the colour of {np}?",
              "the color of {np} is what?", "what color is {np}", "what's the color of {np}?",
              "what colour does {np} have?", "name the color of {np}"],
    "shape": ["what shape is {np}?", "what is the shape of {np}?", "which shape is {np}?",
              "what shape does {np} have?", "what kind of shape is {np}?",
              "tell me the shape of {np}", "{np} has what shape?", "what's the shape of {np}?",
              "what geometric shape is {np}?"],
    "material": ["what material is {np}?", "what is {np} made of?", "what is the material of {np}?",
                 "what is {np} made out of?", "is {np} metal or rubber?", "is {np} rubber or metal?",
                 "which material is {np}?", "what material is {np} made of?",
                 "tell me what {np} is made of", "what's {np} made of?",
                 "is {np} made of metal or rubber?", "what kind of material is {np}?"],
    "size": ["what size is {np}?", "what is the size of {np}?", "how big is {np}?",
             "is {np} big or small?", "is {np} small or large?", "is {np} large or small?",
             "which size is {np}?", "what size does {np} have?", "tell me the size of {np}",
             "is {np} large or small?", "what's the size of {np}?"],
}
COUNT_QUESTIONS = ["how many {pl} are there?", "how many {pl} are in the scene?",
                   "how many {pl} do you see?", "how many {pl} can you see?",
                   "what number of {pl} are there?", "count the {pl}", "count the {pl}.",
                   "what is the number of {pl}?", "how many {pl} are visible?",
                   "tell me how many {pl} there are", "how many {pl} are in the picture?",
                   "what is the total number of {pl}?", "number of {pl}?",
                   "how many {pl} are on the table?", "how many {pl}?", "how many {pl} exist?",
                   "give me the number of {pl}", "count how many {pl} there are",
                   "how many {pl} are present?", "what's the number of {pl}?"]
EXIST_QUESTIONS = ["is there {a}?", "are there any {pl}?", "does the scene contain {a}?",
                   "is there any {sg}?", "do you see {a}?", "can you see any {pl}?",
                   "is {a} present?", "are any {pl} visible?", "does the image contain {a}?",
                   "is there at least one {sg}?", "are there {pl}?", "can you find {a}?",
                   "does the picture have {a} in it?", "is there {a} in the scene?",
                   "do you see any {pl}?", "is there {a} on the table?", "are there any {pl} here?",
                   "can you spot {a}?", "does {a} exist in the scene?"]
COMPARE_QUESTIONS = {
    "color": ["is {a} the same color as {b}?", "does {a} have the same color as {b}?",
              "are {a} and {b} the same color?", "do {a} and {b} have the same colour?",
              "is the color of {a} the same as that of {b}?", "do {a} and {b} share a color?",
              "is {a} the same colour as {b}?"],
    "shape": ["is {a} the same shape as {b}?", "does {a} have the same shape as {b}?",
              "are {a} and {b} the same shape?", "do {a} and {b} have the same shape?",
              "do {a} and {b} share a shape?", "is {a} shaped like {b}?"],
    "material": ["is {a} made of the same material as {b}?", "are {a} and {b} made of the same material?",
                 "does {a} have the same material as {b}?", "is {a} the same material as {b}?",
                 "do {a} and {b} have the same material?"],
    "size": ["is {a} the same size as {b}?", "does {a} have the same size as {b}?",
             "are {a} and {b} the same size?", "do {a} and {b} have the same size?",
             "is {a} as big as {b}?", "are {a} and {b} equally big?"],
}


# --- generation -----------------------------------------------------------------------------
class LanguageGenerator:
    """Texts with labels for one scene. `objects` are SceneObjects, `visible` their flags,
    `rels` the CLEVR relations for the camera that took the image."""

    def __init__(self, objects, visible, rels, rng):
        self.objects, self.visible, self.rels, self.rng = objects, list(visible), rels, rng
        self.n = len(objects)
        # The same references are resolved many times while searching for good texts.
        self._resolved = {}
        self._unique_sets = {}

    def resolve(self, reference: dict) -> list:
        key = _reference_key(reference)
        if key not in self._resolved:
            self._resolved[key] = resolve(reference, self.objects, self.rels)
        return self._resolved[key]

    # references ------------------------------------------------------------------------
    def _all_visible(self, indices) -> bool:
        return all(self.visible[i] for i in indices)

    def _unique_attr_sets(self, target: int) -> list:
        """Attribute subsets naming `target` alone among all objects, smallest first."""
        if target in self._unique_sets:
            return self._unique_sets[target]
        obj = self.objects[target]
        found = self._unique_sets[target] = []
        for k in range(0, 5):
            for names in itertools.combinations(ATTRIBUTE_ORDER, k):
                attrs = {n: getattr(obj, n) for n in names}
                if self.resolve(ref(attrs)) == [target]:
                    found.append(attrs)
        return found

    def unique_reference(self, target: int, exclude: str | None = None, overspecify=0.3):
        """A reference naming `target` alone, without the attribute `exclude`, or None."""
        options = [a for a in self._unique_attr_sets(target) if exclude not in a]
        if not options:
            return None
        smallest = min(len(a) for a in options)
        minimal = [a for a in options if len(a) == smallest]
        if self.rng.random() < overspecify:
            pool = [a for a in options if len(a) > smallest] or minimal
        else:
            pool = minimal
        return ref(pool[int(self.rng.integers(len(pool)))])

    def relational_reference(self, target: int, exclude: str | None = None):
        """'the <attrs> <relation> <anchor>' naming `target`, where the relation is needed."""
        rng = self.rng
        candidates = []
        for relation in ("left", "right", "front", "behind"):
            for anchor in range(self.n):
                if anchor == target or not self.visible[anchor]:
                    continue
                if target not in self.rels[relation][anchor]:
                    continue
                candidates.append((relation, anchor))
        rng.shuffle(candidates)
        obj = self.objects[target]
        for relation, anchor in candidates:
            anchor_ref = self.unique_reference(anchor, overspecify=0.1)
            if anchor_ref is None:
                continue
            for k in range(0, 4):
                subsets = list(itertools.combinations(ATTRIBUTE_ORDER, k))
                rng.shuffle(subsets)
                for names in subsets:
                    if exclude in names:
                        continue
                    attrs = {n: getattr(obj, n) for n in names}
                    alone = self.resolve(ref(attrs))
                    if len(alone) == 1:
                        continue  # attributes suffice; the relation would not disambiguate
                    reference = ref(attrs, relation, anchor_ref)
                    if self.resolve(reference) == [target] and \
                            self._all_visible(involved(reference, self.objects, self.rels) - set(alone) | {target, anchor}):
                        return reference
        return None

    def absent_reference(self):
        """Attributes (maybe with a relation) that match no object at all."""
        rng = self.rng
        for _ in range(50):
            k = int(rng.choice([1, 2, 2, 3, 3, 4]))
            names = list(ATTRIBUTE_ORDER)
            rng.shuffle(names)
            attrs = {n: str(rng.choice(ATTRIBUTES[n])) for n in names[:k]}
            reference = ref(attrs)
            if rng.random() < 0.25:
                anchors = [i for i in range(self.n) if self.visible[i]]
                if anchors:
                    anchor = anchors[int(rng.integers(len(anchors)))]
                    anchor_ref = self.unique_reference(anchor, overspecify=0.0)
                    if anchor_ref is not None:
                        relation = str(rng.choice(["left", "right", "front", "behind"]))
                        reference = ref(attrs, relation, anchor_ref)
                        # Clearly absent: nothing with these attributes even near that side.
                        loose = [i for i, o in enumerate(self.objects) if matches(o, attrs)
                                 and i != anchor and i not in self.rels[_opposite(relation)][anchor]]
                        if loose:
                            continue
            if not self.resolve(reference):
                return reference
        return None

    # items -----------------------------------------------------------------------------
    def ground_items(self, count: int, negatives: int) -> list:
        rng = self.rng
        items = []
        targets = [i for i in range(self.n) if self.visible[i]]
        for _ in range(count * 3):
            if len(items) >= count - negatives or not targets:
                break
            target = targets[int(rng.integers(len(targets)))]
            if rng.random() < 0.35:
                reference = self.relational_reference(target)
            else:
                reference = self.unique_reference(target)
            if reference is None:
                continue
            text = command(rng, reference_phrase(rng, reference))
            items.append(self._ground(text, reference, target))
        for _ in range(negatives):
            reference = self.absent_reference()
            if reference is not None:
                text = command(rng, reference_phrase(rng, reference))
                items.append(self._ground(text, reference, None))
        return items

    def _ground(self, text, reference, target):
        item = {"task": "ground", "text": text,
                "variant": "relational" if reference.get("relation") else "template",
                "program": {"type": "refer", "ref": reference}}
        if target is None:
            item["found"] = False
        else:
            item["target_scene_index"] = target
        return item

    def _reference_for_question(self, target, exclude=None):
        if self.rng.random() < 0.25:
            reference = self.relational_reference(target, exclude=exclude)
            if reference is not None:
                return reference
        return self.unique_reference(target, exclude=exclude, overspecify=0.15)

    def attribute_question(self):
        rng = self.rng
        targets = [i for i in range(self.n) if self.visible[i]]
        if not targets:
            return None
        target = targets[int(rng.integers(len(targets)))]
        attribute = str(rng.choice(ATTRIBUTE_ORDER))
        reference = self._reference_for_question(target, exclude=attribute)
        if reference is None:
            return None
        text = _weighted(rng, ATTRIBUTE_QUESTIONS[attribute]).format(np=reference_phrase(rng, reference))
        program = {"type": "query", "attribute": attribute, "ref": reference}
        return self._vqa(text, program, "attribute", reference)

    def _random_filter(self, max_attrs=2, from_object=True):
        rng = self.rng
        k = int(rng.choice([0, 1, 1, 1, 2, 2, 3][: 3 + 2 * max_attrs]))
        names = list(ATTRIBUTE_ORDER)
        rng.shuffle(names)
        names = names[:k]
        if from_object and self.n and rng.random() < 0.7:
            obj = self.objects[int(rng.integers(self.n))]
            return {n: getattr(obj, n) for n in names}
        return {n: str(rng.choice(ATTRIBUTES[n])) for n in names}

    def count_question(self):
        rng = self.rng
        for _ in range(20):
            reference = ref(self._random_filter(from_object=rng.random() < 0.8))
            if rng.random() < 0.2:
                anchors = [i for i in range(self.n) if self.visible[i]]
                anchor_ref = self.unique_reference(anchors[int(rng.integers(len(anchors)))],
                                                   overspecify=0.0) if anchors else None
                if anchor_ref is not None:
                    reference = ref(reference["attrs"], str(rng.choice(list(RELATION_PHRASES))),
                                    anchor_ref)
            found = self.resolve(reference)
            if len(found) > 10 or not self._all_visible(self._label_objects(reference)):
                continue
            pl = reference_phrase(rng, reference, det=None, plural=True)
            text = str(rng.choice(COUNT_QUESTIONS)).format(pl=pl)
            return self._vqa(text, {"type": "count", "ref": reference}, "count", reference)
        return None

    def _label_objects(self, reference) -> set:
        """Objects whose visibility a count/exist label depends on."""
        found = set(self.resolve(reference))
        if reference.get("relation"):
            anchor = self.resolve(reference["anchor"])
            # Objects with the attributes but near the relation's boundary are ambiguous to the
            # eye; they are excluded by requiring all attribute matches to be visible.
            found |= set(anchor) | {i for i, o in enumerate(self.objects)
                                    if matches(o, reference["attrs"])}
        else:
            found |= {i for i, o in enumerate(self.objects) if matches(o, reference["attrs"])}
        return found

    def exist_question(self, want_yes: bool):
        rng = self.rng
        for _ in range(30):
            attrs = self._random_filter(max_attrs=3, from_object=want_yes)
            if not attrs:
                continue
            reference = ref(attrs)
            if rng.random() < 0.2 and want_yes:
                anchors = [i for i in range(self.n) if self.visible[i]]
                anchor_ref = self.unique_reference(anchors[int(rng.integers(len(anchors)))],
                                                   overspecify=0.0) if anchors else None
                if anchor_ref is not None:
                    reference = ref(attrs, str(rng.choice(list(RELATION_PHRASES))), anchor_ref)
            found = self.resolve(reference)
            if bool(found) != want_yes or not self._all_visible(self._label_objects(reference)):
                continue
            form = str(rng.choice(EXIST_QUESTIONS))
            text = form.format(a=reference_phrase(rng, reference, det="a"),
                               sg=reference_phrase(rng, reference, det=None),
                               pl=reference_phrase(rng, reference, det=None, plural=True))
            return self._vqa(text, {"type": "exist", "ref": reference}, "exist", reference)
        return None

    def compare_question(self, want_same: bool):
        rng = self.rng
        targets = [i for i in range(self.n) if self.visible[i]]
        for _ in range(30):
            if len(targets) < 2:
                return None
            a, b = (int(i) for i in rng.choice(targets, size=2, replace=False))
            attribute = str(rng.choice(ATTRIBUTE_ORDER))
            same = getattr(self.objects[a], attribute) == getattr(self.objects[b], attribute)
            if same != want_same:
                continue
            ref_a = self.unique_reference(a, exclude=attribute, overspecify=0.1)
            ref_b = self.unique_reference(b, exclude=attribute, overspecify=0.1)
            if ref_a is None or ref_b is None:
                continue
            form = str(rng.choice(COMPARE_QUESTIONS[attribute]))
            text = form.format(a=reference_phrase(rng, ref_a), b=reference_phrase(rng, ref_b))
            program = {"type": "compare", "attribute": attribute, "refs": [ref_a, ref_b]}
            return self._vqa(text, program, "compare", ref_a, ref_b)
        return None

    def _vqa(self, text, program, kind, *references):
        relational = any(r.get("relation") for r in references)
        return {"task": "vqa", "text": text, "kind": kind,
                "variant": "relational" if relational else "template",
                "answer": execute(program, self.objects, self.rels), "program": program}

    def vqa_items(self, count: int) -> list:
        rng = self.rng
        plan = ["attribute", "attribute", "count", "count", "exist", "exist", "compare",
                "attribute"]
        plan = (plan * (count // len(plan) + 1))[:count]
        items = []
        for kind in plan:
            if kind == "attribute":
                item = self.attribute_question()
            elif kind == "count":
                item = self.count_question()
            elif kind == "exist":
                item = self.exist_question(want_yes=bool(rng.random() < 0.5))
            else:
                item = self.compare_question(want_same=bool(rng.random() < 0.5))
            if item is not None:
                items.append(item)
        return items

    # captions --------------------------------------------------------------------------
    def caption_items(self, count: int) -> list:
        items = []
        for i in range(count):
            item = self.caption(match=(i % 2 == 0))
            if item is not None:
                items.append(item)
        return items

    def caption(self, match: bool):
        rng = self.rng
        for _ in range(30):
            clauses = []
            for _k in range(int(rng.integers(1, 4))):
                clause = self._true_clause()
                if clause is not None and clause not in clauses and not any(
                        c.get("exist", c.get("count")) == clause.get("exist", clause.get("count"))
                        for c in clauses):
                    clauses.append(clause)
            if not clauses:
                return None
            if not match:
                false_clause = self._false_clause()
                if false_clause is None:
                    continue
                clauses[int(rng.integers(len(clauses)))] = false_clause
            program = {"type": "caption", "clauses": clauses}
            if execute(program, self.objects, self.rels) != match:
                continue
            text = self._caption_text(clauses)
            return {"task": "caption", "text": text, "variant": "template", "match": match,
                    "program": program}
        return None

    def _true_clause(self):
        rng = self.rng
        for _ in range(10):
            reference = ref(self._random_filter(max_attrs=3, from_object=True))
            found = self.resolve(reference)
            if not found or not self._all_visible(self._label_objects(reference)):
                continue
            if rng.random() < 0.4:
                return {"count": reference, "n": len(found)}
            return {"exist": reference}
        return None

    def _false_clause(self):
        rng = self.rng
        for _ in range(20):
            reference = ref(self._random_filter(max_attrs=3, from_object=False))
            found = self.resolve(reference)
            if not self._all_visible(self._label_objects(reference)):
                continue
            if not found and reference["attrs"]:
                return {"exist": reference}
            if found and len(found) < 10:
                options = [n for n in (len(found) - 1, len(found) + 1, len(found) + 2)
                           if 1 <= n <= 10]
                return {"count": reference, "n": int(rng.choice(options))}
        return None

    def _caption_text(self, clauses) -> str:
        rng = self.rng
        parts = []
        for clause in clauses:
            if "exist" in clause:
                parts.append(reference_phrase(rng, clause["exist"], det="a"))
            else:
                n = clause["n"]
                plural = n != 1
                phrase = reference_phrase(rng, clause["count"], det=None, plural=plural)
                number = NUMBER_WORDS[n] if rng.random() < 0.7 else str(n)
                parts.append(f"{number} {phrase}")
        body = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
        form = str(rng.choice(["{b}", "{b}.", "there is {b}", "a scene with {b}",
                               "an image showing {b}", "{b} on a gray floor",
                               "a picture of {b}", "this shows {b}", "{b} on the table",
                               "we can see {b}"]))
        return form.format(b=body)


def _opposite(relation: str) -> str:
    return {"left": "right", "right": "left", "front": "behind", "behind": "front"}[relation]


def generate(objects, visible, rels, rng, n_ground=6, n_negative=1, n_vqa=8, n_caption=2) -> list:
    """A balanced mix of labelled texts for one image (dicts without image fields)."""
    generator = LanguageGenerator(objects, visible, rels, rng)
    return (generator.ground_items(n_ground, n_negative) + generator.vqa_items(n_vqa)
            + generator.caption_items(n_caption))
