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

from .edited_model import EditedModel
from .edits import Edit, Holdout
from .prefix import FrozenPrefix
from .router import NO_BLOCK, Route

MODES = ("teacher-forced", "generate")
KEYS = ("edit_success", "generality", "locality", "holdout_accuracy", "perplexity", "fluency", "n_edits",
        "n_clusters", "n_blocks", "mode", "routing")
FLUENCY_TOKENS = 40
"""New tokens per continuation for `fluency` (generate mode): ROME's and EasyEdit's measure reads 100."""


def normalise(text: str) -> str:
    return " ".join(text.split())


def produces(text: str, target: str) -> bool:
    """The generate-mode rule: the continuation starts with the target, whitespace normalised."""
    return normalise(text).startswith(normalise(target))


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


def _scored(edited, mode, inputs, targets, route, batch_size, advance, base=None) -> list[Outcome]:
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


def _share(values: list[bool]) -> float | None:
    return None if not values else round(sum(values) / len(values), 6)


def success(edited: EditedModel, edits: list[Edit], mode: str = "teacher-forced", batch_size: int = 32,
            advance: Callable[[int], None] = lambda n: None) -> float | None:
    """Share of edits whose target the edited model produces (None for no edits)."""
    outcomes = _scored(edited, mode, [e.input for e in edits], [e.target for e in edits], True, batch_size, advance)
    return _share([o.hit for o in outcomes])


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
    return _share([a.output == b.output for a, b in zip(after, before)]), after, before


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


def fluency(edited: EditedModel, inputs: list[str], targets: list[str], routes: list[Route], tokens: int,
            batch_size: int, advance: Callable[[int], None] = lambda n: None) -> dict:
    """What edited continuations read like: over the inputs routed to a block (the others are the base
    model itself), `tokens` new tokens generated with and without the bundle; the n-gram entropy of
    each side (melo_cli/fluency.py), edited / base, and the share of edited continuations that stutter
    their target."""
    from .fluency import mean_entropy, repeats

    rows = [i for i, r in enumerate(routes) if r.routed]
    advance(2 * (len(inputs) - len(rows)))
    after = generated(edited, [inputs[i] for i in rows], [None] * len(rows), True, batch_size, advance, tokens)
    before = generated(edited, [inputs[i] for i in rows], [None] * len(rows), False, batch_size, advance, tokens)
    edited_h = mean_entropy([o.output for o in after])
    base_h = mean_entropy([o.output for o in before])
    stutter = [repeats(o.output, targets[i]) for o, i in zip(after, rows)]
    return {"tokens": tokens, "continuations": len(rows),
            "edited_entropy": None if edited_h is None else round(edited_h, 4),
            "base_entropy": None if base_h is None else round(base_h, 4),
            "ratio": round(edited_h / base_h, 4) if edited_h is not None and base_h else None,
            "repeats": _share(stutter)}


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
    file and in the bundle (a superseded edit is no longer what the model should say), and a
    forgotten edit is not scored at all unless a live edit says the same again."""
    from .edits import normalise_input
    from .triage import triage

    overridden = {id(e) for e, _ in triage(edits).overridden}
    kept = [e for e in edits if id(e) not in overridden]
    live = {normalise_input(e.input): e.target for e in bundle_edits if e.live}
    gone = {(normalise_input(e.input), e.target) for e in bundle_edits if not e.live}
    return [e for e in kept if (normalise_input(e.input), e.target) not in gone
            or live.get(normalise_input(e.input)) == e.target]


def evaluate(edited: EditedModel, edits: list[Edit], holdout: list[Holdout], modes: list[str], batch_size: int = 32,
             advance: Callable[[int], None] = lambda n: None, bundle_edits: list[Edit] | None = None,
             fluency_tokens: int = FLUENCY_TOKENS) -> dict:
    """All metrics in one dict with exactly KEYS; a metric that does not apply is None (fluency: in
    generate mode with `fluency_tokens` > 0, for models that generate text)."""
    if not edited.task.generates:
        modes = ["teacher-forced"] if modes == ["generate"] else modes  # one prediction per input either way
    numbers = {(e.input, e.target): n for n, e in enumerate(bundle_edits or [])}
    rephrased = [(r, e) for e in edits for r in e.rephrases]
    per_mode: dict[str, dict] = {}
    routing = fluency_result = None
    es_outcomes: list[Outcome] = []
    for mode in modes:
        es = _scored(edited, mode, [e.input for e in edits], [e.target for e in edits], True, batch_size, advance,
                     base=None if es_outcomes else edited.frozen_prefix())
        gen = _scored(edited, mode, [r for r, _ in rephrased], [e.target for _, e in rephrased], True, batch_size,
                      advance)
        es_outcomes = es_outcomes or es
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
        if mode == "generate" and fluency_tokens > 0 and edited.task.generates:
            fluency_result = fluency(edited, [e.input for e in edits] + [r for r, _ in rephrased],
                                     [e.target for e in edits] + [e.target for _, e in rephrased],
                                     [o.route for o in es + gen], fluency_tokens, batch_size, advance)
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
    result["perplexity"] = perplexity(edited, edits, es_outcomes, batch_size)
    result["fluency"] = fluency_result
    router = edited.router
    result.update(n_edits=len(edits), n_clusters=len(router) if router is not None else 0,
                  n_blocks=edited.n_blocks, mode=modes[0] if len(modes) == 1 else "both", routing=routing)
    return {key: result[key] for key in KEYS}


def work(edits: list[Edit], holdout: list[Holdout], modes: list[str], fluency_tokens: int = FLUENCY_TOKENS) -> int:
    """How many inputs `evaluate` will run, for a progress bar."""
    scored = len(edits) + sum(len(e.rephrases) for e in edits)
    fluent = 2 * scored if "generate" in modes and fluency_tokens > 0 else 0
    return (scored + 2 * len(holdout)) * len(modes) + fluent


def gate_failures(result: dict, gates: dict[str, float | None]) -> list[str]:
    """Each `--min-*` gate that a metric misses (in any mode), as a sentence."""
    failures = []
    for key, minimum in gates.items():
        if minimum is None:
            continue
        value = result.get(key)
        if key == "fluency":
            values = [("generate", value["ratio"] if isinstance(value, dict) else None)]
        else:
            values = value.items() if isinstance(value, dict) else [(result["mode"], value)]
        for mode, v in values:
            if v is None:
                failures.append(f"{key} is not available ({mode}) but --min-{key.replace('_', '-')} {minimum} was asked")
            elif v < minimum:
                failures.append(f"{key} {v:.4f} < {minimum} ({mode})")
    return failures
