"""`melo eval`'s report: every metric in one dict with exactly KEYS (metrics.py defines each), the fluency
of edited continuations, the progress total, and the gates that make it a CI check."""

from __future__ import annotations

from typing import Callable

from melo_cli.edits import Edit, Holdout
from melo_cli.errors import InputError
from melo_cli.eval.fluency import mean_entropy, repeats
from melo_cli.eval.metrics import Outcome, generated, locality, perplexity, scored, share
from melo_cli.model.edited_model import EditedModel
from melo_cli.router.vocabulary import Route
from melo_cli.tasks import causal_target_ids, joiner

KEYS = ("edit_success", "generality", "locality", "holdout_accuracy", "perplexity", "fluency", "n_edits",
        "n_clusters", "n_blocks", "mode", "routing")
FLUENCY_TOKENS = 40
"""New tokens per continuation for `fluency` (generate mode): ROME's and EasyEdit's measure reads 100."""



def fluency(edited: EditedModel, inputs: list[str], targets: list[str], routes: list[Route], tokens: int,
            batch_size: int, advance: Callable[[int], None] = lambda n: None) -> dict:
    """What edited continuations read like: over the inputs routed to a block (the others are the base
    model itself), `tokens` new tokens generated with and without the bundle; the n-gram entropy of
    each side (melo_cli/eval/fluency.py), edited / base, the share of edited continuations that stutter
    their target, and the ceiling (`ceiling`): how fluent the bare model itself is after the same
    targets, so that a low ratio can be told apart as the mechanism's or the counterfactual's."""
    rows = [i for i, r in enumerate(routes) if r.routed]
    advance(3 * (len(inputs) - len(rows)))
    routed = [inputs[i] for i in rows]
    after = generated(edited, routed, [None] * len(rows), True, batch_size, advance, tokens)
    before = generated(edited, routed, [None] * len(rows), False, batch_size, advance, tokens)
    oracle = ceiling(edited, routed, [targets[i] for i in rows], tokens, batch_size, advance)
    edited_h = mean_entropy([o.output for o in after])
    base_h = mean_entropy([o.output for o in before])
    oracle_h = mean_entropy(oracle) if oracle is not None else None
    stutter = [repeats(o.output, targets[i]) for o, i in zip(after, rows)]
    return {"tokens": tokens, "continuations": len(rows),
            "edited_entropy": None if edited_h is None else round(edited_h, 4),
            "base_entropy": None if base_h is None else round(base_h, 4),
            "ratio": round(edited_h / base_h, 4) if edited_h is not None and base_h else None,
            "repeats": share(stutter),
            "oracle_entropy": None if oracle_h is None else round(oracle_h, 4),
            "oracle_ratio": round(oracle_h / base_h, 4) if oracle_h is not None and base_h else None}


def ceiling(edited: EditedModel, inputs: list[str], targets: list[str], tokens: int, batch_size: int,
            advance: Callable[[int], None] = lambda n: None) -> list[str] | None:
    """The ceiling of "give the target, then read like the base model" (decoder-only models; None for
    others): the bare model, no block at all, continuing each input written with its target, the
    target's tokens counting towards the `tokens` new tokens. A false fact can make the base model
    itself loop (SmolLM2: "... developed by Nokia, is a 10.1.1.1.1"); no edit that hands back to it
    reads better than this."""
    if not edited.task.prompts_share_positions:
        advance(len(inputs))
        return None
    tokenizer = edited.backbone.tokenizer
    heads = [joiner(p, t) + t for p, t in zip(inputs, targets)]
    budgets = [max(tokens - len(causal_target_ids(tokenizer, p, t)[1]), 0) for p, t in zip(inputs, targets)]
    texts = list(heads)
    for budget in sorted(set(budgets)):
        rows = [i for i, b in enumerate(budgets) if b == budget]
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            if budget:
                preds = edited.predict([inputs[i] + heads[i] for i in chunk], max_new_tokens=budget, route=False)
                for i, pred in zip(chunk, preds):
                    texts[i] = heads[i] + pred.text
            advance(len(chunk))
    return texts


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
        es = scored(edited, mode, [e.input for e in edits], [e.target for e in edits], True, batch_size, advance,
                     base=None if es_outcomes else edited.frozen_prefix())
        gen = scored(edited, mode, [r for r, _ in rephrased], [e.target for _, e in rephrased], True, batch_size,
                      advance)
        es_outcomes = es_outcomes or es
        metrics = {"edit_success": share([o.hit for o in es]), "generality": share([o.hit for o in gen])}
        if holdout:
            metrics["locality"], after, before = locality(edited, holdout, mode, batch_size, advance)
            if all(h.target is not None for h in holdout):
                metrics["holdout_accuracy"] = {"base": share([b.hit for b in before]),
                                               "edited": share([a.hit for a in after])}
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


def modes_of(mode: str) -> list[str]:
    """The modes a `mode` option names (both: teacher-forced and generate); InputError for another."""
    modes = {"teacher-forced": ["teacher-forced"], "generate": ["generate"],
             "both": ["teacher-forced", "generate"]}.get(mode)
    if modes is None:
        raise InputError(f"`mode` {mode!r}: choose teacher-forced, generate or both")
    return modes


def work(edits: list[Edit], holdout: list[Holdout], modes: list[str], fluency_tokens: int = FLUENCY_TOKENS) -> int:
    """How many inputs `evaluate` will run, for a progress bar."""
    scored = len(edits) + sum(len(e.rephrases) for e in edits)
    fluent = 3 * scored if "generate" in modes and fluency_tokens > 0 else 0
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
