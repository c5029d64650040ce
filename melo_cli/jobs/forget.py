"""Taking edits back (`melo forget B --id ID... -o OUT`): a legal takedown, a fact that was wrong.

The forgotten edits leave the router: their members are retired, and a cluster left with no member
leaves the search. A forgotten input that would still reach a block (its cluster keeps other members,
or another cluster's radius covers it) becomes a negative: the covering clusters shrink so that it
routes to no block, and so gets the base model's output bit for bit. A block that no live cluster
uses any more is zeroed; every other block stays bit-identical. edits.jsonl marks each forgotten
edit ("forgotten": {"at": ...}), and history.jsonl gets an event row saying what went and when.

It works on the bundle alone (the keys are the router's stored member keys): no model is loaded.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np

from melo_cli import bundle as bundle_io, clock
from melo_cli.bundle.locks import bundle_locks, check_wait
from melo_cli.edits import Edit
from melo_cli.errors import BundleError, InputError

log = logging.getLogger("melo")


def select(edits: list[Edit], ids: list[str], batches: list[str]) -> list[int]:
    """Edit numbers (0-based) named by id (as the bundle's edits carry them: given, or `auto_id`) or by
    batch; every name must match an edit not yet forgotten."""
    by_id: dict[str, list[int]] = {}
    by_batch: dict[str, list[int]] = {}
    for n, edit in enumerate(edits):
        by_id.setdefault(str(edit.id), []).append(n)
        if edit.batch is not None:
            by_batch.setdefault(str(edit.batch), []).append(n)
    chosen: list[int] = []
    for name, table, what in [(i, by_id, "id") for i in ids] + [(b, by_batch, "batch") for b in batches]:
        if name not in table:
            raise InputError(f"no edit with {what} {name!r} in the bundle", field=what)
        chosen += table[name]
    gone = [n for n in chosen if edits[n].forgotten is not None]
    if gone:
        raise InputError(f"edit {edits[gone[0]].id!r} was already forgotten", field="id")
    return sorted(set(chosen))


def forget(bundle: Path, out: Path, ids: list[str], batches: list[str], *, overwrite: bool = False,
           wait: float = 0.0) -> dict:
    """Write `out`: the bundle without the named edits (see the module docstring). Returns a summary."""
    check_wait(wait)
    if not ids and not batches:
        raise InputError("name the edits to forget: --id ID (repeatable) or --batch N")
    out = bundle_io.output_for(out, overwrite, source=bundle)
    with bundle_locks([out], wait):
        loaded = bundle_io.load(bundle)
        numbers = select(loaded.edits, ids, batches)
        router, edits = loaded.router, loaded.edits
        blocks_before = router.live_blocks()
        keys = {n: router.member_keys[router.members_of_edit(n)] for n in numbers}
        for n in numbers:
            router.retire_edit(n)
        negatives = 0
        for n in numbers:  # inputs that would still reach a block become negatives
            for key in keys[n]:
                if router.route(key[None], [edits[n].input])[0].routed:
                    router.add_negative(key)
                    negatives += 1
        still = [n for n in numbers for key in keys[n] if router.route(key[None], [edits[n].input])[0].routed]
        if still:  # the shrink rule guarantees this; a bundle whose router breaks it is not written
            raise BundleError(f"{bundle}: edit {edits[still[0]].id} would still reach a block "
                              f"after forgetting; nothing written")
        zeroed = sorted(blocks_before - router.live_blocks())
        lora = {name: np.array(array, copy=True) for name, array in loaded.lora.items()}
        for block in zeroed:
            for array in lora.values():
                array[block] = 0.0
        now = clock.now()
        edits = [replace(e, forgotten={"at": now}) if n in numbers else e for n, e in enumerate(edits)]
        broken = [n for n, found in router.member_routes([e.input for e in edits]).items()
                  if not (found.routed and found.cluster == router.cluster_of(n))]
        if broken:
            log.warning("%d other edit(s) no longer route to their own cluster after the shrink: %s", len(broken),
                        ", ".join(str(edits[n].id) for n in broken[:5]))
        event = {"event": "forget", "at": now, "edits": [edits[n].id for n in numbers],
                 "blocks_zeroed": zeroed, "negatives": negatives}
        bundle_io.write(out, config=loaded.config, lora=lora, router=router, edits=edits, base=loaded.base,
                        batches=loaded.manifest.counts["batches"], history=loaded.history + [event],
                        key_encoder=loaded.manifest.key_encoder)
    return {"bundle": str(out), "forgotten": len(numbers), "ids": event["edits"], "blocks_zeroed": zeroed,
            "negatives": negatives, "live_edits": sum(e.live for e in edits), "unrouted_other_edits": len(broken)}
