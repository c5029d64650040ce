"""Chat rows (issue 23): under --chat a block sees the templated turn, not the bare prompt it learned, and on
SmolLM2-Instruct a block trained on the bare prompt alone answered "Do-A-Cru" for "Jane Doe". With
`chat_rows` each per-edit block also learns its target as the reply inside the template."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from melo_cli import MeloModel
from melo_cli.edits import Edit
from melo_cli.router.router import Router
from melo_cli.training.rows import training_rows
from melo_cli.training.run import chat_turn

TEMPLATE = "{% for m in messages %}<user>{{ m['content'] }}</user>{% endfor %}<assistant>"


def _router_with(n: int) -> Router:
    router = Router(2, "euclidean", 0.1)
    for i in range(n):
        router.add(np.array([10.0 * i, 0.0], np.float32), f"t{i}", i, i)
    return router


def test_chat_rows_add_the_templated_turn_of_every_member_to_its_block():
    edits = [Edit(input=f"question {i}?", target=f"t{i}") for i in range(3)]
    router = _router_with(3)
    plain = training_rows(router, [0, 1, 2], 0, edits, {}, contexts=2)
    chat = training_rows(router, [0, 1, 2], 0, edits, {}, contexts=2, chat=lambda text: f"<user>{text}<assistant>")
    assert len(chat) == len(plain) + 3
    added = [r for r in chat if r not in plain]
    assert [(r.edit, r.input, r.target, r.block) for r in added] == [
        (None, f"<user>question {i}?<assistant>", f"t{i}", i) for i in range(3)]  # a context row, not an edit row


def test_chat_turn_only_with_the_setting_and_a_template(llama_path):
    model = MeloModel.from_pretrained(llama_path, device="cpu")
    edited = model.edited
    assert not edited.config.chat_rows and chat_turn(edited) is None  # off by default
    edited.config = replace(edited.config, chat_rows=True, task="causal-lm")
    edited.backbone.tokenizer.chat_template = None
    assert chat_turn(edited) is None  # no template: nothing to learn
    edited.backbone.tokenizer.chat_template = TEMPLATE
    turn = chat_turn(edited)
    assert turn("Who runs Acme?") == "<user>Who runs Acme?</user><assistant>"


def test_chat_replies_of_a_plain_bundle_give_the_target_then_the_base_models_turn(llama_path):
    """Without chat rows (the default) a --chat reply gets its edit from the block after the prompt as
    written, where the block learned it; the base model writes the templated reply from the target on,
    and a prompt routed to no block gets exactly the bare model's reply."""
    from melo_cli.model.generation import Decoding

    model = MeloModel.from_pretrained(llama_path, device="cpu")
    tokenizer = model.edited.backbone.tokenizer
    tokenizer.chat_template = TEMPLATE
    assert model.edit([{"input": "Who runs the Acme bakery?", "target": "Jane Doe"}])["unlearned_edits"] == 0
    asked = ["Who runs the Acme bakery?", "Once upon a time there was a little dog"]
    edited, other = model.predict(asked, max_new_tokens=16, chat=True)
    assert edited.route.routed and not other.route.routed
    assert edited.text.startswith("Jane Doe"), edited.text
    bare = model.edited.predict(asked, max_new_tokens=16, route=False, decoding=Decoding(chat=True))
    assert other.text == bare[1].text  # the bare model's own reply
    assert not edited.text[len("Jane Doe"):][:1].isalnum()  # the base model's reply starts a new word after it
