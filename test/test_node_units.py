"""The node's small parts, in-process and without DDS: the latest-frame slot, prompt
normalisation, the question heuristic of the Query service, box conversion."""
from __future__ import annotations

import threading
import time

from essen_ros.ros.node import (MAX_PROMPT_CHARS, Frame, LatestFrameSlot, _roi,
                                looks_like_question, normalise_text)


def _frame(name):
    return Frame(msg=name, compressed=False, received=time.perf_counter())


def test_slot_keeps_only_the_newest_frame_and_counts_the_replaced_ones():
    slot = LatestFrameSlot()
    for name in ("a", "b", "c"):
        slot.put(_frame(name))
    assert slot.take(timeout=0).msg == "c"
    assert slot.dropped == 2


def test_slot_hands_each_frame_out_once():
    slot = LatestFrameSlot()
    slot.put(_frame("a"))
    assert slot.take(timeout=0).msg == "a"
    started = time.monotonic()
    assert slot.take(timeout=0.2) is None
    assert time.monotonic() - started >= 0.19
    assert slot.dropped == 0


def test_slot_wakes_a_waiting_worker_at_once_and_on_close():
    slot = LatestFrameSlot()
    got = []
    worker = threading.Thread(target=lambda: got.append(slot.take(timeout=5)))
    worker.start()
    time.sleep(0.05)
    slot.put(_frame("x"))
    worker.join(timeout=1)
    assert not worker.is_alive() and got[0].msg == "x"

    waiting = threading.Thread(target=lambda: got.append(slot.take(timeout=5)))
    waiting.start()
    time.sleep(0.05)
    slot.close()
    waiting.join(timeout=1)
    assert not waiting.is_alive() and got[1] is None


def test_prompts_are_whitespace_normalised_and_cut():
    assert normalise_text("  pick\n up\tthe   cube ") == ("pick up the cube", False)
    assert normalise_text(" \n ") == ("", False)
    long_text, cut = normalise_text("x" * (MAX_PROMPT_CHARS + 5))
    assert cut and len(long_text) == MAX_PROMPT_CHARS
    assert normalise_text("grüner Würfel 🤖") == ("grüner Würfel 🤖", False)


def test_question_heuristic_for_query_requests_without_a_task():
    assert looks_like_question("how many cubes are there")
    assert looks_like_question("Is there a red sphere")
    assert looks_like_question("the red cube?")
    assert not looks_like_question("pick up the red cube")
    assert not looks_like_question("")


def test_boxes_are_rounded_and_clipped_to_the_image():
    roi = _roi([-5.4, 10.6, 50.5, 400.0], width=40, height=30)
    assert (roi.x_offset, roi.y_offset, roi.width, roi.height) == (0, 11, 40, 19)
    degenerate = _roi([30, 20, 10, 5], width=40, height=30)
    assert (degenerate.width, degenerate.height) == (0, 0)
