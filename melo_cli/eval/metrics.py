"""Edit success, generality, locality, holdout accuracy, perplexity and routing of an edited model.

Two ways to read "the model produces the target", reported side by side because teacher-forced
scores overstate edits that fail under real generation ("The Mirage of Model Editing", 2025):
- teacher-forced: every target token is the argmax given the true prefix (classifiers: the label);
- generate: the greedy continuation starts with the target, whitespace normalised.
Locality compares the edited model's output on unrelated inputs with the base model's, which is
the same model run with no route (so no second copy of the weights is loaded).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

from melo_cli.edits import Edit, Holdout, normalise_input
from melo_cli.edits.triage import triage
from melo_cli.model.edited_model import EditedModel
from melo_cli.model.prefix import FrozenPrefix
from melo_cli.router.vocabulary import NO_BLOCK, Route

MODES = ("teacher-forced", "generate")


def produces(text: str, target: str) -> bool:
    """The generate-mode rule: the continuation starts with the target, whitespace normalised."""
    return normalise_input(text).startswith(normalise_input(target))


@dataclass
class Outcome:
    """Per input: does the model produce the target, which route it took, and its raw output (None
    where the metric did not need it); teacher-forced: the target's summed NLL and token count."""

    hit: bool
    route: Route
    output: object
    nll: float | None = None
    tokens: int = 0
    base_nll: float | None = None


def _chunks(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _by_length(edited: EditedModel, texts: list[str], targets: list[str | None] | None = None) -> list[int]:
    """Indices in order of token length with the target, so that a batch pads little (results go
    back in input order). Characters are a poor proxy: 100 CounterFact paraphrases in batches of 32 took
    62% more positions than their tokens when sorted by characters, 28% when sorted by tokens (SmolLM2)."""
    tok = edited.backbone.tokenizer
    lengths = [len(ids) for ids in tok(list(texts))["input_ids"]] if texts else []
    if targets is not None:
        lengths = [n + (_target_tokens(edited, t) if t else 0) for n, t in zip(lengths, targets)]
    return sorted(range(len(texts)), key=lambda i: lengths[i])


def _target_tokens(edited: EditedModel, target: str) -> int:
    tok = edited.backbone.tokenizer
    return len(tok(target, add_special_tokens=False)["input_ids"])


def teacher_forced(edited: EditedModel, inputs: list[str], targets: list[str], route: bool, batch_size: int,
                   advance: Callable[[int], None] = lambda n: None, outputs: bool = False,
                   base: FrozenPrefix | None = None) -> list[Outcome]:
    """Teacher-forced hits and NLL (and the base model's NLL, given the frozen prefix); with
    `outputs`, the argmax at every position instead (what locality compares: full logits)."""
    out: list[Outcome | None] = [None] * len(inputs)
    for chunk in _chunks(_by_length(edited, inputs, targets), batch_size):
        texts, goals = [inputs[i] for i in chunk], [targets[i] for i in chunk]
        if outputs:
            enc, logits, routes = edited.teacher_forced(texts, goals, route=route)
            _, hits = edited.task.score(logits, enc.targets)
            outputs = edited.task.argmax_outputs(logits, enc)
            for j, i in enumerate(chunk):
                out[i] = Outcome(bool(hits[j]), routes[j], outputs[j])
        else:
            scores = edited.target_scores(texts, goals, route=route, base=base)
            for j, i in enumerate(chunk):
                out[i] = Outcome(bool(scores.hits[j]), scores.routes[j], None, float(scores.nll[j]),
                                 int(scores.tokens[j]), None if scores.base_nll is None else float(scores.base_nll[j]))
        advance(len(chunk))
    return out


def generated(edited: EditedModel, inputs: list[str], targets: list[str | None], route: bool, batch_size: int,
              advance: Callable[[int], None] = lambda n: None, default_tokens: int = 10,
              decided: dict[int, Outcome] | None = None) -> list[Outcome]:
    """Greedy continuations (or labels) and whether each starts with its target; rows in `decided`
    are taken as given."""
    out: list[Outcome | None] = [None] * len(inputs)
    decided = decided or {}
    for i, outcome in decided.items():
        out[i] = outcome
    todo = [i for i in _by_length(edited, inputs) if i not in decided]
    lengths = {i: _target_tokens(edited, targets[i]) + 1 if targets[i] else default_tokens for i in todo}
    todo.sort(key=lambda i: lengths[i])  # stable: by target length, then input length
    for chunk in _chunks(todo, batch_size):
        preds = edited.predict([inputs[i] for i in chunk], max_new_tokens=max(lengths[i] for i in chunk), route=route)
        for i, pred in zip(chunk, preds):
            output = pred.label if pred.label is not None else pred.text
            target = targets[i]
            hit = (output == target) if pred.label is not None else bool(target) and produces(output, target)
            out[i] = Outcome(hit, pred.route, output)
        advance(len(chunk))
    return out


def scored(edited, mode, inputs, targets, route, batch_size, advance, base=None) -> list[Outcome]:
    """Edit success and generality: does the model produce each target?

    Generate mode on a causal LM checks teacher-forced first: greedy decoding emits exactly the
    target's tokens when each is the argmax after the prompt and the target's earlier tokens, which
    one forward pass shows; only the rows where that fails are decoded (another tokenisation of the
    target may still be produced). Those rows keep their NLL for perplexity."""
    if mode == "generate" and not edited.task.greedy_is_teacher_forced:
        return generated(edited, inputs, targets, route, batch_size, advance)
    forced = teacher_forced(edited, inputs, targets, route, batch_size,
                            advance if mode == "teacher-forced" else lambda n: None, base=base)
    if mode == "teacher-forced":
        return forced
    hits = {i: replace(o, output=targets[i]) for i, o in enumerate(forced) if o.hit}
    advance(len(hits))
    out = generated(edited, inputs, targets, route, batch_size, advance, decided=hits)
    return [replace(f, hit=o.hit, route=o.route, output=o.output) for o, f in zip(out, forced)]


def _run(edited, mode, inputs, targets, route, batch_size, advance) -> list[Outcome]:
    """Locality's runs: outputs to compare (every position's argmax, or the greedy text)."""
    if mode == "teacher-forced":
        goals = [t if t is not None else _placeholder(edited) for t in targets]
        return teacher_forced(edited, inputs, goals, route, batch_size, advance, outputs=True)
    return generated(edited, inputs, targets, route, batch_size, advance)


def _placeholder(edited: EditedModel) -> str:
    if not edited.task.generates:
        return str(edited.backbone.model.config.id2label[0])
    return " "


def share(values: list[bool]) -> float | None:
    return None if not values else round(sum(values) / len(values), 6)


def success(edited: EditedModel, edits: list[Edit], mode: str = "teacher-forced", batch_size: int = 32,
            advance: Callable[[int], None] = lambda n: None) -> float | None:
    """Share of edits whose target the edited model produces (None for no edits)."""
    outcomes = scored(edited, mode, [e.input for e in edits], [e.target for e in edits], True, batch_size, advance)
    return share([o.hit for o in outcomes])


def locality(edited: EditedModel, holdout: list[Holdout], mode: str = "teacher-forced", batch_size: int = 32,
             advance: Callable[[int], None] = lambda n: None) -> tuple[float | None, list[Outcome], list[Outcome]]:
    """Share of holdout inputs whose output is the base model's; with the outcomes after and before.

    A row routed to no block runs the base model itself (bit for bit, by construction), so only the
    routed rows are run, with and without their block; the others are run once, and only when their
    targets are given (for holdout accuracy). Unrun rows have output None on both sides."""
    inputs, targets = [h.input for h in holdout], [h.target for h in holdout]
    routes = edited.route(inputs, batch_size)
    routed = [i for i, r in enumerate(routes) if r.routed]
    needed = list(range(len(inputs))) if all(t is not None for t in targets) else routed
    ran = _run(edited, mode, [inputs[i] for i in needed], [targets[i] for i in needed], True, batch_size, advance)
    after = [Outcome(False, r, None) for r in routes]
    for i, outcome in zip(needed, ran):
        after[i] = outcome
    advance(2 * len(inputs) - len(needed) - len(routed))
    again = _run(edited, mode, [inputs[i] for i in routed], [targets[i] for i in routed], False, batch_size, advance)
    before = [Outcome(a.hit, Route(None, None, NO_BLOCK), a.output) for a in after]
    for i, outcome in zip(routed, again):
        before[i] = outcome
    return share([a.output == b.output for a, b in zip(after, before)]), after, before


def perplexity(edited: EditedModel, edits: list[Edit], outcomes: list[Outcome], batch_size: int) -> dict | None:
    """exp(mean NLL per target token) under the base and the edited model (causal LMs only), from
    the routed teacher-forced outcomes of the edits; their base NLL came with them (replayed prefix),
    or their routed rows are run again unrouted."""
    if not edited.task.perplexity or not edits:
        return None
    if any(o.nll is None for o in outcomes):
        outcomes = teacher_forced(edited, [e.input for e in edits], [e.target for e in edits], True, batch_size)
    base = [o.base_nll if o.base_nll is not None else o.nll for o in outcomes]
    routed = [i for i, o in enumerate(outcomes) if o.route.routed and o.base_nll is None]
    again = teacher_forced(edited, [edits[i].input for i in routed], [edits[i].target for i in routed], False,
                           batch_size)
    for i, outcome in zip(routed, again):
        base[i] = outcome.nll
    tokens = max(sum(o.tokens for o in outcomes), 1)
    return {"base": round(math.exp(sum(base) / tokens), 6),
            "edited": round(math.exp(sum(o.nll for o in outcomes) / tokens), 6)}


def live_only(edits: list[Edit], bundle_edits: list[Edit]) -> list[Edit]:
    """The edits worth scoring: a later correction of the same input replaces an earlier one, in the
    file and in the bundle (a superseded edit is no longer what the model should say), and a
    forgotten edit is not scored at all unless a live edit says the same again."""
    overridden = {id(e) for e, _ in triage(edits).overridden}
    kept = [e for e in edits if id(e) not in overridden]
    live = {normalise_input(e.input): e.target for e in bundle_edits if e.live}
    gone = {(normalise_input(e.input), e.target) for e in bundle_edits if not e.live}
    return [e for e in kept if (normalise_input(e.input), e.target) not in gone
            or live.get(normalise_input(e.input)) == e.target]
