"""The routing vocabulary: the values and records every part of melo names when it speaks of routes.

One home for each: NO_BLOCK (a row that runs the base model), NEGATIVE (the label of an input that must
keep its output), RETIRED (a member an edit superseded or forgot), SHRINK and SAME_KEY (the radius rules'
constants), Route and AddResult (what a lookup and an add give back), and the router's distances and
auto radius. torch-free: the bundle reader validates arrays with these.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from melo_cli.config import METRICS

NO_BLOCK = -1
"""The block id of a row that runs the base model alone."""
NEGATIVE = "\u0000no-edit"
"""Label of a negative: an input whose output must not change. Its cluster has no block."""
RETIRED = -2
"""member_cluster of a retired member: an edit that a later edit superseded, or that was forgotten."""
SHRINK = 0.999
"""Split radii are set to SHRINK * d / 2: just under half the distance, so two clusters never touch."""
SAME_KEY = 1e-3
"""Keys closer than SAME_KEY * r0 are one input as far as routing can tell (float noise of padding and
batching is about 1e-7 of a key's scale; distinct inputs are at least about r0 apart)."""


@dataclass
class Route:
    """Where one key goes: the nearest cluster and whether it is inside that cluster's radius."""

    cluster: int | None
    distance: float | None
    block: int

    @property
    def routed(self) -> bool:
        return self.block != NO_BLOCK


@dataclass
class AddResult:
    """What adding one key did: which cluster now holds it and which rule fired."""

    cluster: int
    rule: str  # "new", "join", "split" or "negative"
    reassigned: bool = False  # the key joined a cluster of an earlier block, now moved to this one
    superseded: tuple[int, ...] = ()  # edits at the same key with another label, retired by this one


def distance(a: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
    """Distances between rows of a (n, d) and one vector b (d,), in the router's metric."""
    if metric == "euclidean":
        return np.linalg.norm(a - b, axis=-1)
    if metric == "cosine":
        na = np.linalg.norm(a, axis=-1).clip(min=1e-12)
        nb = max(float(np.linalg.norm(b)), 1e-12)
        return 1.0 - (a @ b) / (na * nb)
    raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")


def auto_radius(keys: np.ndarray, metric: str, fraction: float = 0.5) -> float:
    """A starting radius from the keys themselves: `fraction` of the median nearest-neighbour distance.

    Key scales differ by model and layer by orders of magnitude, so no fixed number serves every
    model; half the typical gap between two distinct edits keeps new clusters from swallowing
    their neighbours while still covering close rewordings.
    """
    keys = np.asarray(keys, np.float32)
    gaps = np.array([np.sort(distance(np.delete(keys, i, 0), keys[i], metric))[0] for i in range(len(keys))]
                    if len(keys) > 1 else [])
    gaps = gaps[gaps > 1e-6]
    if len(gaps):
        return float(fraction * np.median(gaps))
    if metric == "cosine":
        return 0.05
    scale = float(np.linalg.norm(keys, axis=-1).mean()) if len(keys) else 0.0
    return 0.1 * scale if scale > 0 else 1.0
