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
from dataclasses import dataclass
from typing import Callable

import torch

from . import tasks
from .edited import EditedModel
from .edits import Edit, Holdout
from .router import NO_BLOCK, Route

MODES = ("teacher-forced", "generate")
KEYS = ("edit_success", "generality", "locality", "holdout_accuracy", "perplexity", "n_edits", "n_clusters",
        "n_blocks", "mode", "routing")


def normalise(text: str) -> str:
    return " ".join(text.split())


def produces(text: str, target: str) -> bool:
    """The generate-mode rule: the continuation starts with the target, whitespace normalised."""
    return normalise(text).startswith(normalise(target))


@dataclass
class Outcome:
    """Per input: does the model produce the target, which route it took, and its raw output."""

    hit: bool
    route: Route
    output: object


def _chunks(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _target_tokens(edited: EditedModel, target: str) -> int:
    tok = edited.backbone.tokenizer
    return len(tok(target, add_special_tokens=False)["input_ids"])


def teacher_forced(edited: EditedModel, inputs: list[str], targets: list[str], route: bool, batch_size: int,
                   advance: Callable[[int], None] = lambda n: None) -> list[Outcome]:
    out = []
    for chunk in _chunks(list(zip(inputs, targets)), batch_size):
        enc, logits, routes = edited.teacher_forced([c[0] for c in chunk], [c[1] for c in chunk], route=route)
        _, hits = tasks.score(edited.backbone, logits, enc.targets)
        predictions = logits.argmax(-1)
        if edited.backbone.task == "causal-lm":
            predictions = torch.where(enc.inputs["attention_mask"].bool(), predictions, -1)
        out += [Outcome(bool(h), r, predictions[i].tolist()) for i, (h, r) in enumerate(zip(hits, routes))]
        advance(len(chunk))
    return out


def generated(edited: EditedModel, inputs: list[str], targets: list[str | None], route: bool, batch_size: int,
              advance: Callable[[int], None] = lambda n: None, default_tokens: int = 10) -> list[Outcome]:
    out = []
    for chunk in _chunks(list(zip(inputs, targets)), batch_size):
        lengths = [_target_tokens(edited, t) + 1 if t else default_tokens for _, t in chunk]
        preds = edited.predict([c[0] for c in chunk], max_new_tokens=max(lengths), route=route)
        for (_, target), pred in zip(chunk, preds):
            output = pred.label if pred.label is not None else pred.text
            hit = (output == target) if pred.label is not None else bool(target) and produces(output, target)
            out.append(Outcome(hit, pred.route, output))
        advance(len(chunk))
    return out


def _run(edited, mode, inputs, targets, route, batch_size, advance) -> list[Outcome]:
    if mode == "teacher-forced" and all(t is not None for t in targets):
        return teacher_forced(edited, inputs, targets, route, batch_size, advance)
    if mode == "teacher-forced":  # holdout without targets: compare the argmax on the input itself
        placeholder = [t if t is not None else _placeholder(edited) for t in targets]
        return teacher_forced(edited, inputs, placeholder, route, batch_size, advance)
    return generated(edited, inputs, targets, route, batch_size, advance)


def _placeholder(edited: EditedModel) -> str:
    if edited.backbone.task == "classification":
        return str(edited.backbone.model.config.id2label[0])
    return " "


def _share(values: list[bool]) -> float | None:
    return None if not values else round(sum(values) / len(values), 6)


def success(edited: EditedModel, edits: list[Edit], mode: str = "teacher-forced", batch_size: int = 32,
            advance: Callable[[int], None] = lambda n: None) -> float | None:
    """Share of edits whose target the edited model produces (None for no edits)."""
    outcomes = _run(edited, mode, [e.input for e in edits], [e.target for e in edits], True, batch_size, advance)
    return _share([o.hit for o in outcomes])


def locality(edited: EditedModel, holdout: list[Holdout], mode: str = "teacher-forced", batch_size: int = 32,
             advance: Callable[[int], None] = lambda n: None) -> tuple[float | None, list[Outcome], list[Outcome]]:
    """Share of holdout inputs whose output is the base model's; with the outcomes after and before."""
    inputs, targets = [h.input for h in holdout], [h.target for h in holdout]
    after = _run(edited, mode, inputs, targets, True, batch_size, advance)
    # a row routed to no block ran the base model itself (bit for bit, by construction): only the
    # routed rows need a second, unrouted run
    routed = [i for i, outcome in enumerate(after) if outcome.route.routed]
    advance(len(after) - len(routed))
    again = _run(edited, mode, [inputs[i] for i in routed], [targets[i] for i in routed], False, batch_size, advance)
    before = [Outcome(a.hit, Route(None, None, NO_BLOCK), a.output) for a in after]
    for i, outcome in zip(routed, again):
        before[i] = outcome
    return _share([a.output == b.output for a, b in zip(after, before)]), after, before


def perplexity(edited: EditedModel, inputs: list[str], targets: list[str], batch_size: int) -> dict | None:
    """exp(mean NLL per target token) under the base and the edited model (causal LMs only)."""
    if edited.backbone.task != "causal-lm" or not inputs:
        return None
    result = {}
    for name, route in (("base", False), ("edited", True)):
        nll, count = 0.0, 0
        for chunk in _chunks(list(zip(inputs, targets)), batch_size):
            enc, logits, _ = edited.teacher_forced([c[0] for c in chunk], [c[1] for c in chunk], route=route)
            total, n = tasks.token_nll(edited.backbone, logits, enc.targets)
            nll, count = nll + float(total.sum()), count + int(n.sum())
        result[name] = round(math.exp(nll / max(count, 1)), 6)
    return result


def right_block(edited: EditedModel, edit: Edit, route: Route, numbers: dict[tuple[str, str], int]) -> bool:
    """Routed to the block that learned this edit: its member's cluster's block (or a cluster of its target)."""
    router = edited.router
    if not route.routed or router is None:
        return False
    number = numbers.get((edit.input, edit.target))
    cluster = router.cluster_of(number) if number is not None else None
    if cluster is not None:
        return int(router.blocks[cluster]) == route.block
    return router.labels[route.cluster] == edit.target


def live_only(edits: list[Edit], bundle_edits: list[Edit]) -> list[Edit]:
    """The edits worth scoring: a later correction of the same input replaces an earlier one, in the
    file and in the bundle (a superseded edit is no longer what the model should say)."""
    from .edits import normalise_input, triage

    overridden = {id(e) for e, _ in triage(edits).overridden}
    kept = [e for e in edits if id(e) not in overridden]
    live = {normalise_input(e.input): e.target for e in bundle_edits if e.live}
    gone = {(normalise_input(e.input), e.target) for e in bundle_edits if not e.live}
    return [e for e in kept if (normalise_input(e.input), e.target) not in gone
            or live.get(normalise_input(e.input), e.target) == e.target]


def evaluate(edited: EditedModel, edits: list[Edit], holdout: list[Holdout], modes: list[str], batch_size: int = 32,
             advance: Callable[[int], None] = lambda n: None, bundle_edits: list[Edit] | None = None) -> dict:
    """All metrics in one dict with exactly KEYS; a metric that does not apply is None."""
    if edited.backbone.task == "classification":
        modes = ["teacher-forced"] if modes == ["generate"] else modes  # one prediction per input either way
    numbers = {(e.input, e.target): n for n, e in enumerate(bundle_edits or [])}
    rephrased = [(r, e) for e in edits for r in e.rephrases]
    per_mode: dict[str, dict] = {}
    routing = None
    for mode in modes:
        es = _run(edited, mode, [e.input for e in edits], [e.target for e in edits], True, batch_size, advance)
        gen = _run(edited, mode, [r for r, _ in rephrased], [e.target for _, e in rephrased], True, batch_size, advance)
        metrics = {"edit_success": _share([o.hit for o in es]), "generality": _share([o.hit for o in gen])}
        if holdout:
            metrics["locality"], after, before = locality(edited, holdout, mode, batch_size, advance)
            if all(h.target is not None for h in holdout):
                metrics["holdout_accuracy"] = {"base": _share([b.hit for b in before]),
                                               "edited": _share([a.hit for a in after])}
            else:
                metrics["holdout_accuracy"] = None
        else:
            after = []
            metrics["locality"] = metrics["holdout_accuracy"] = None
        per_mode[mode] = metrics
        if routing is None:
            routing = {
                "edits": {"total": len(es), "routed": sum(o.route.routed for o in es),
                          "right_block": sum(right_block(edited, e, o.route, numbers) for e, o in zip(edits, es))},
                "rephrases": {"total": len(gen), "routed": sum(o.route.routed for o in gen),
                              "right_block": sum(right_block(edited, e, o.route, numbers)
                                                 for (_, e), o in zip(rephrased, gen))},
                "holdout": {"total": len(after), "routed": sum(o.route.routed for o in after)},
            }
    result: dict = {}
    for key in ("edit_success", "generality", "locality", "holdout_accuracy"):
        values = {mode: per_mode[mode][key] for mode in modes}
        result[key] = next(iter(values.values())) if len(modes) == 1 else values
    result["perplexity"] = perplexity(edited, [e.input for e in edits], [e.target for e in edits], batch_size)
    router = edited.router
    result.update(n_edits=len(edits), n_clusters=len(router) if router is not None else 0,
                  n_blocks=edited.n_blocks, mode=modes[0] if len(modes) == 1 else "both", routing=routing)
    return {key: result[key] for key in KEYS}


def work(edits: list[Edit], holdout: list[Holdout], modes: list[str]) -> int:
    """How many inputs `evaluate` will run, for a progress bar."""
    per_mode = len(edits) + sum(len(e.rephrases) for e in edits) + 2 * len(holdout)
    return per_mode * len(modes)


def gate_failures(result: dict, gates: dict[str, float | None]) -> list[str]:
    """Each `--min-*` gate that a metric misses (in any mode), as a sentence."""
    failures = []
    for key, minimum in gates.items():
        if minimum is None:
            continue
        value = result.get(key)
        values = value.items() if isinstance(value, dict) else [(result["mode"], value)]
        for mode, v in values:
            if v is None:
                failures.append(f"{key} is not available ({mode}) but --min-{key.replace('_', '-')} {minimum} was asked")
            elif v < minimum:
                failures.append(f"{key} {v:.4f} < {minimum} ({mode})")
    return failures
