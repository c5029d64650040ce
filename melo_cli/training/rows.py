"""What a batch trains: the blocks its clusters use (compacted) and the rows that go into them.

When a key joins a cluster of an earlier block, that cluster moves to the new block and its earlier
members are trained into the new block too, so no edit is left routed to a block that never learned
it; earlier blocks themselves never change. With per-edit blocks each block also learns its target
after the generic CONTEXTS, so that any input the router sends it gets the edit, and (`chat`) as the
reply to its edit's input in the base's chat template: under --chat the block sees the templated turn,
and a block trained on the bare prompt alone gave "Do-A-Cru" for "Jane Doe" there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from melo_cli.config import CONTEXTS
from melo_cli.edits import Edit
from melo_cli.router.router import Router
from melo_cli.training.loop import Prepared


def compact_blocks(router: Router, touched: list[int], first: int) -> int:
    """Renumber the new blocks the batch's clusters ended up with as first, first+1, ...; their count.

    A key that joins a cluster moves the cluster to its own block, leaving the block it was given
    unused: compacting keeps the pool free of blocks that no cluster routes to.
    """
    used = sorted({int(router.blocks[c]) for c in touched if router.blocks[c] >= first and not router.retired[c]})
    renumber = {block: first + i for i, block in enumerate(used)}
    for cluster in set(touched):
        router.set_block(cluster, renumber.get(int(router.blocks[cluster]), int(router.blocks[cluster])))
    return len(used)


@dataclass(frozen=True)
class Row:
    """One row a batch trains: an edit's input (or a generic context) and its target, into a block."""

    edit: int | None
    """The edit number (None: a generic context the block also learns its target after)."""
    input: str
    target: str
    block: int


def training_rows(router: Router, touched: list[int], first: int, edits: list[Edit], superseded: dict[int, int],
                  contexts: int, chat: Callable[[str], str] | None = None) -> list[Row]:
    """Every row a batch trains.

    Every live member of a cluster that now uses a new block is trained into it (members of earlier
    batches too: their cluster moved to the new block); with per-edit blocks each block also learns
    its target after the generic CONTEXTS, and, given `chat` (an input -> its chat-templated turn), as
    the reply to each member's input in that template.
    """
    rows, seen = [], set()
    for cluster in dict.fromkeys(touched):
        block = int(router.blocks[cluster])
        if block < first or router.retired[cluster]:
            continue
        for number in (int(m) for m in router.members_of(cluster)):
            if number not in superseded and number not in seen:
                seen.add(number)
                rows.append(Row(number, edits[number].input, edits[number].target, block))
                if chat is not None:
                    rows.append(Row(None, chat(edits[number].input), edits[number].target, block))
        rows += [Row(None, context, router.labels[cluster], block) for context in CONTEXTS[:contexts]]
    return rows


def rows_of_batch(prepared: Prepared | None, numbers: list[int], rows: list[Row]) -> tuple[list[int], Prepared] | None:
    """Where the batch's edits (captured in group order) are among its training rows, if all are."""
    if prepared is None:
        return None
    where = {r.edit: i for i, r in enumerate(rows) if r.edit is not None}
    if not all(n in where for n in numbers):
        return None  # an edit of the batch is not trained (superseded): capture the rows afresh
    return [where[n] for n in numbers], prepared
