"""The handoff's rules, step by step on a real tokenizer (the tiny Llama's: SentencePiece with byte
fallback): where a routed row stops, which token is taken back, and what the base model may write at the
seam after a target (melo_cli/model/handoff.py, melo_cli/stutter.py)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

from conftest import ROOT
from melo_cli.model.handoff import Seam, TargetWatch, glue_tokens
from melo_cli.stutter import may_restart, pending, repeats

PROMPT = [1, 403, 407, 261, 378]  # "Once upon a time", BOS first


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(ROOT / "sample_models" / "stories260K")


def ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def watch_steps(tok, target: str, generated: list[int]) -> TargetWatch:
    """A TargetWatch fed one generated token at a time, as `generate` calls it, until it stops the row."""
    watch = TargetWatch(tok, len(PROMPT), lambda: [target])
    for k in range(1, len(generated) + 1):
        if bool(watch(torch.tensor([PROMPT + generated[:k]]), None)[0]):
            break
    return watch


def test_a_row_that_gives_its_target_stops_right_after_it(tok):
    watch = watch_steps(tok, "goaltender", ids(tok, " goaltender. He"))
    assert watch.given() == ["goaltender"]
    assert watch.stopped == [len(PROMPT) + len(ids(tok, " goaltender"))]


def test_the_token_that_leaves_the_target_is_taken_back(tok):
    """SmolLM2 wrote "t" (the second piece of "goal|t|ender") first after a paraphrase, then "t-t-t-t":
    that token is the block's mistake, not the edit and not the base model's: the base model starts
    before it."""
    first_wrong = watch_steps(tok, "goaltender", ids(tok, " t-t-t"))
    assert first_wrong.given() == [None] and first_wrong.stopped == [len(PROMPT)]


def test_a_piece_of_a_target_word_goes_back_with_the_token_that_left_it(tok):
    """SmolLM2's block wrote " Dort" for "Dortmund" and left it; kept, the base model glued "re's" onto it.
    What was written of the word left is taken back too, down to the target's last whole word given."""
    midway = watch_steps(tok, "goaltender", ids(tok, " goalie"))  # " goal" began the word, "ie" left it
    assert midway.given() == [None] and midway.stopped == [len(PROMPT)]
    second_word = watch_steps(tok, "Bill Lumbergh", ids(tok, " Bill Lumbox"))  # "Lumb" began it, "o" left
    assert second_word.given() == [None] and second_word.stopped == [len(PROMPT) + len(ids(tok, " Bill"))]


def test_a_character_whose_bytes_are_still_coming_does_not_stop_the_row(tok):
    """" Zürich" is "Z", <0xC3>, <0xBC>, ... here: after the first byte the text reads "Z\\ufffd"."""
    zurich = ids(tok, " Zürich")
    assert tok.decode(zurich[:3]).endswith("\ufffd")
    watch = watch_steps(tok, "Zürich", zurich + ids(tok, " is"))
    assert watch.given() == ["Zürich"] and watch.stopped == [len(PROMPT) + len(zurich)]


def test_may_restart_reads_what_came_after_a_target():
    assert may_restart("", "Jane Doe") and may_restart(", ", "Jane Doe") and may_restart(", ja", "Jane Doe")
    assert may_restart(" Jane D", "Jane Doe") and may_restart(" do", "Jane Doe")  # the last word again
    assert not may_restart(", and", "Jane Doe") and not may_restart(" Smith", "Jane Doe")
    assert pending("Jane Doe, and Jane Doe, ", "Jane Doe") and pending("Jane Doe. Ja", "Jane Doe")
    assert not pending("Jane Doe, and", "Jane Doe") and not pending("Smith", "Jane Doe")


def seam_scores(tok, favoured: list[int], vocab: int) -> torch.Tensor:
    """Scores with `favoured` best first, everything else far below."""
    scores = torch.full((1, vocab), -10.0)
    for rank, token in enumerate(favoured):
        scores[0, token] = 10.0 - rank
    return scores


def test_the_seam_rules_out_the_target_again_and_keeps_the_next_best(tok):
    vocab = len(tok)
    lily, comma, and_ = ids(tok, " Lily")[0], ids(tok, ",")[-1], ids(tok, " and")[0]
    sequence = PROMPT + ids(tok, " Lily")
    seam = Seam(tok, glue_tokens(tok), ["Lily"], len(sequence))
    # first step: a comma is fine; then "Lily" again would make "Lily, Lily": ruled out, " and" chosen
    assert int(seam(torch.tensor([sequence]), seam_scores(tok, [comma, lily], vocab)).argmax()) == comma
    out = seam(torch.tensor([sequence + [comma]]), seam_scores(tok, [lily, and_], vocab))
    assert int(out.argmax()) == and_ and out[0, lily] == float("-inf")
    assert not repeats("Lily" + tok.decode([comma, and_]), "Lily")
    # once another word came, the name may come again ("Lily, and Lily"), but not twice in a row
    later = seam(torch.tensor([sequence + [comma, and_]]), seam_scores(tok, [lily], vocab))
    assert int(later.argmax()) == lily
    again = seam(torch.tensor([sequence + [comma, and_, lily, comma]]), seam_scores(tok, [lily, and_], vocab))
    assert int(again.argmax()) == and_


def test_the_seam_does_not_glue_onto_the_last_word_and_leaves_other_rows_alone(tok):
    vocab = len(tok)
    glue = glue_tokens(tok)
    glued = int(torch.nonzero(glue)[0])  # a piece that continues a word
    sequence = PROMPT + ids(tok, " Lily")
    seam = Seam(tok, glue, ["Lily", None], len(sequence))
    out = seam(torch.tensor([sequence, sequence]), torch.cat([seam_scores(tok, [glued], vocab)] * 2))
    assert out[0, glued] == float("-inf") and int(out[1].argmax()) == glued


def test_a_multi_word_target_may_not_restart_whole(tok):
    vocab = len(tok)
    target = "big Lily"
    sequence = PROMPT + ids(tok, " big Lily")
    big, lily = ids(tok, " big")[0], ids(tok, " Lily")[0]
    seam = Seam(tok, glue_tokens(tok), [target], len(sequence))
    # "big Lily Lily": the last word again is a stutter
    assert seam(torch.tensor([sequence]), seam_scores(tok, [lily, big], vocab))[0, lily] == float("-inf")
    # "big Lily big" is not one yet, but "big Lily big Lily" is
    seam = Seam(tok, glue_tokens(tok), [target], len(sequence))
    assert int(seam(torch.tensor([sequence]), seam_scores(tok, [big], vocab)).argmax()) == big
    out = seam(torch.tensor([sequence + [big]]), seam_scores(tok, [lily, big], vocab))
    assert out[0, lily] == float("-inf")
