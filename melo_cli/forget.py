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

import datetime as dt
import json
import logging
from pathlib import Path

import numpy as np

from . import bundle as bundle_io
from .edits import record_is_live
from .errors import BundleError, InputError
from .locks import bundle_locks, check_wait

log = logging.getLogger("melo")


def select(records: list[dict], edits: list, ids: list[str], batches: list[str]) -> list[int]:
    """Edit numbers (0-based) named by id (as the bundle's edits carry them: given, or `auto_id`) or by
    batch; every name must match an edit not yet forgotten."""
    by_id: dict[str, list[int]] = {}
    by_batch: dict[str, list[int]] = {}
    for n, (r, edit) in enumerate(zip(records, edits)):
        by_id.setdefault(str(edit.id), []).append(n)
        if r.get("batch") is not None:
            by_batch.setdefault(str(r["batch"]), []).append(n)
    chosen: list[int] = []
    for name, table, what in [(i, by_id, "id") for i in ids] + [(b, by_batch, "batch") for b in batches]:
        if name not in table:
            raise InputError(f"no edit with {what} {name!r} in the bundle", field=what)
        chosen += table[name]
    gone = [n for n in chosen if "forgotten" in records[n]]
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
        numbers = select(loaded.records, loaded.edits, ids, batches)
        router, edits = loaded.router, loaded.edits
        blocks_before = router.live_blocks()
        keys = {n: router.member_keys[router.member_edit == n] for n in numbers}
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
        now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()
        records = [dict(r) for r in loaded.records]
        for n in numbers:
            records[n]["forgotten"] = {"at": now}
        broken = [n for n, found in router.member_routes([e.input for e in edits]).items()
                  if not (found.routed and found.cluster == router.cluster_of(n))]
        if broken:
            log.warning("%d other edit(s) no longer route to their own cluster after the shrink: %s", len(broken),
                        ", ".join(str(edits[n].id) for n in broken[:5]))
        event = {"event": "forget", "at": now, "edits": [edits[n].id for n in numbers],
                 "blocks_zeroed": zeroed, "negatives": negatives}
        history = loaded.history + [event]
        counts = dict(loaded.manifest.counts)
        counts["live_edits"] = sum(map(record_is_live, records))
        counts["clusters"] = len(router)
        bundle_io.write(out, config=loaded.config, lora=lora, router=router, records=records, base=loaded.base,
                        counts=counts, key_encoder=loaded.manifest.key_encoder,
                        extra_files={bundle_io.HISTORY: "".join(json.dumps(r) + "\n" for r in history)})
    return {"bundle": str(out), "forgotten": len(numbers), "ids": event["edits"], "blocks_zeroed": zeroed,
            "negatives": negatives, "live_edits": counts["live_edits"], "unrouted_other_edits": len(broken)}
