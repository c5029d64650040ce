"""Prediction with an edited model: text (greedy unless asked otherwise, up to EOS) or a label per input.

A routed row's block gives the edit's target, and the base model continues from there (handoff.py),
unless `decoding.handoff` is off. Under a chat template the router sees the prompt as written; a bundle
trained with chat rows gives its edit inside the templated turn, any other gives it after the prompt as
written, where its blocks learned it, and the base model writes the reply in the turn from the target on
(`_chat_replies`). Prompts too long for a decoder's positions are cut from the left.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from transformers import StoppingCriteriaList

from melo_cli import tasks
from melo_cli.errors import InputError
from melo_cli.model import handoff, lengths
from melo_cli.model.backbones import Backbone
from melo_cli.model.generation import Decoding, apply_chat, eos_ids
from melo_cli.router.vocabulary import NO_BLOCK, Route

log = logging.getLogger("melo")


@dataclass
class Prediction:
    """One input's output under the edited model, with the route it took."""

    text: str | None
    label: str | None
    probabilities: dict[str, float] | None
    route: Route


def predict(edited, inputs: list[str], max_new_tokens: int, route: bool, decoding: Decoding) -> list:
    """EditedModel.predict: a Prediction per input."""
    backbone = edited.backbone
    prompts = inputs
    if decoding.chat:
        inputs = apply_chat(backbone.tokenizer, prompts, decoding.system)
    enc = _fit_positions(backbone, tasks.encode(backbone, inputs), max_new_tokens).to(backbone.device)
    if not route:
        scope = no_routes(len(inputs))
    elif decoding.chat:
        routes = edited.route(prompts)
        if any(r.routed for r in routes) and not edited.config.chat_rows:
            if decoding.handoff and edited.task.generates and edited.task.prompts_share_positions:
                return _chat_replies(edited, prompts, enc, routes, max_new_tokens, decoding)
            log.warning("this bundle's blocks learned their edits on plain prompts, not chat turns: a --chat reply "
                        "may miss its edit (melo edit --chat-rows trains the templated turn too)")
        scope = edited.fixed_routes(routes, enc.key_mask.device)
    else:
        scope = edited.routed(enc.key_mask, inputs)
    task = edited.task
    if not task.generates:
        with scope as found:
            probs = torch.softmax(edited.forward(enc.inputs).logits.float(), -1).cpu()
        id2label = backbone.model.config.id2label
        results = []
        for row, route_taken in enumerate(found):
            p = {str(id2label[i]): float(probs[row, i]) for i in range(probs.shape[1])}
            results.append(Prediction(None, str(id2label[int(probs[row].argmax())]), p, route_taken))
        return results
    found, tokens, _ = _generate(edited, inputs, enc, scope, max_new_tokens, decoding)
    if not found:
        found = [Route(None, None, NO_BLOCK) for _ in inputs]
    return [Prediction(backbone.tokenizer.decode(row, skip_special_tokens=True), None, None, route_taken)
            for row, route_taken in zip(tokens, found)]


def _chat_replies(edited, prompts: list[str], turns: tasks.Encoded, routes: list[Route], max_new_tokens: int,
                  decoding: Decoding) -> list[Prediction]:
    """--chat with blocks that learned plain prompts: each routed row's block writes its target after the
    prompt as written, and the base model alone writes every reply in the templated turn (`turns`), a
    routed one from that target on, so it ends at end-of-turn as the bare model's does. Left in the turn,
    a block trained on the bare prompt wrote "Do-A-Cru" for "Jane Doe" (SmolLM2-Instruct, one LoRA layer)."""
    backbone, tokenizer = edited.backbone, edited.backbone.tokenizer
    rows = [i for i, r in enumerate(routes) if r.routed]
    plain = _fit_positions(backbone, tasks.encode(backbone, [prompts[i] for i in rows]), max_new_tokens).to(backbone.device)
    scope = edited.fixed_routes([routes[i] for i in rows], plain.key_mask.device)
    _, given, given_targets = _generate(edited, [prompts[i] for i in rows], plain, scope, max_new_tokens, decoding,
                                        hand_back=False)
    starts: list[list[int]] = [[] for _ in prompts]
    targets: list[str | None] = [None for _ in prompts]
    for i, tokens, target in zip(rows, given, given_targets):
        text = tokenizer.decode(tokens, skip_special_tokens=True).strip()
        starts[i] = tokenizer(text, add_special_tokens=False)["input_ids"][:max_new_tokens] if text else []
        targets[i] = target if text else None
    mask = turns.inputs["attention_mask"]
    sequences = [torch.cat([turns.inputs["input_ids"][i][mask[i].bool()].cpu(), torch.tensor(starts[i], dtype=torch.long)])
                 for i in range(len(prompts))]
    options = dict(**decoding.generate_kwargs(), pad_token_id=backbone.pad_id,
                   eos_token_id=eos_ids(backbone.model, backbone.tokenizer))
    budgets = [max_new_tokens - len(s) for s in starts]
    more = handoff.continue_sequences(backbone, sequences, targets, [max(b, 1) for b in budgets], options)
    return [Prediction(tokenizer.decode(start + added[:budget], skip_special_tokens=True), None, None, route)
            for start, added, budget, route in zip(starts, more, budgets, routes)]


def _generate(edited, inputs: list[str], enc: tasks.Encoded, scope, max_new_tokens: int,
              decoding: Decoding, hand_back: bool = True) -> tuple[list[Route], list[list[int]], list[str | None]]:
    """(routes, new tokens per row, the target each row gave whole or None): generation in the route scope,
    each routed row handed back to the base model once it has given its target or left it
    (melo_cli/model/handoff.py) unless `decoding.handoff` is off; with `hand_back` off, a handed-back row
    ends where its block stopped."""
    backbone, task = edited.backbone, edited.task
    kwargs = {k: v for k, v in enc.inputs.items() if k != "position_ids"}
    width = kwargs["input_ids"].shape[1]
    start = width if task.prompts_share_positions else 0
    options = dict(**decoding.generate_kwargs(), pad_token_id=backbone.pad_id,
                   eos_token_id=eos_ids(backbone.model, backbone.tokenizer))
    if decoding.seed is not None:
        torch.manual_seed(decoding.seed)
    with scope as found:
        watch = handoff.TargetWatch(backbone.tokenizer, start, lambda: _taught(edited, inputs, found), options["eos_token_id"],
                                    task.target_ends_with_eos) if decoding.handoff and edited.router is not None else None
        extra = {"stopping_criteria": StoppingCriteriaList([watch])} if watch is not None else {}
        generated = backbone.model.generate(**kwargs, max_new_tokens=max_new_tokens, **options, **extra)
    tokens = [row.tolist() for row in task.new_tokens(generated, enc)]
    for row in watch.handed_back() if watch is not None else []:
        tokens[row] = generated[row, start:watch.stopped[row]].tolist()
    rows = [r for r in (watch.handed_back() if watch is not None and hand_back else [])
            if len(tokens[r]) < max_new_tokens]
    if rows:
        more = handoff.continue_on_base(backbone, task, enc, generated, watch, rows,
                                        [max_new_tokens - len(tokens[r]) for r in rows], options)
        for row, added in zip(rows, more):
            tokens[row] += added
    given = watch.given() if watch is not None and watch.targets is not None else [None] * len(tokens)
    return list(found), tokens, given

def _taught(edited, inputs: list[str], routes: list[Route]) -> list[str | None]:
    """Each routed row's target as its block learned to write it after this input: the label of the
    cluster it was routed to, encoded by the task and decoded (a task may teach it changed);
    None for a row with no block."""
    rows = [i for i, r in enumerate(routes) if r.routed]
    out: list[str | None] = [None] * len(routes)
    if not rows:
        return out
    labels = [edited.router.labels[routes[i].cluster] for i in rows]
    targets = tasks.encode(edited.backbone, [inputs[i] for i in rows], labels).targets
    for i, row in zip(rows, targets.tolist()):
        out[i] = edited.backbone.tokenizer.decode([t for t in row if t >= 0], skip_special_tokens=True)
    return out


def _fit_positions(backbone: Backbone, enc: tasks.Encoded, max_new_tokens: int) -> tasks.Encoded:
    """Left-padded causal prompts cut from the left so that prompt + new tokens fit the model's
    positions (GPT-2 has 1,024 and fails past them); said once per call on stderr."""
    limit = lengths.max_positions(backbone)
    width = enc.inputs["input_ids"].shape[1] if "input_ids" in enc.inputs else 0
    if not tasks.task_of(backbone).prompts_share_positions or not limit or width + max_new_tokens <= limit:
        return enc
    if max_new_tokens > limit // 2:  # generating would crowd the prompt out (100,000 tokens kept 1 and ran on)
        raise InputError(f"`max_new_tokens` {max_new_tokens}: the model reads at most {limit:,} positions, which "
                         f"must hold the prompt too; ask for at most {limit // 2:,}")
    keep = max(limit - max_new_tokens, 1)
    log.warning("prompt of %d tokens cut to its last %d: the model reads at most %d positions, %d of them "
                "for new tokens", width, keep, limit, max_new_tokens)
    mask = enc.inputs["attention_mask"][:, -keep:]
    inputs = {"input_ids": enc.inputs["input_ids"][:, -keep:], "attention_mask": mask,
              "position_ids": tasks.positions(mask)}
    return tasks.Encoded(inputs, enc.key_mask[:, -keep:])


@contextmanager
def no_routes(n: int) -> Iterator[list[Route]]:
    yield [Route(None, None, NO_BLOCK) for _ in range(n)]
