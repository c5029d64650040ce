"""Radius policies: how a new key joins the router, and what a negative does to the clusters near it.

Each policy is one small object (chosen by name from POLICIES) that owns its add rule, its rule for
negatives and the fraction of the median gap between edits its auto radius uses; a new policy is one
class and one entry. The router (router.py) keeps the clusters and the hnswlib index; the policies
change them only through its public mutators (new_cluster, add_member, set_centre, set_radius,
set_block, move_member), so this module does not import it.
"""

from __future__ import annotations

import numpy as np

from melo_cli.router.vocabulary import NEGATIVE, SHRINK, AddResult, distance


class SplitPolicy:
    """MELO/GRACE's rules: a key joins a cluster of its label within reach, and the radii of two labels
    shrink to just under half their distance; a negative shrinks every edit cluster that covers it."""

    name = "split"
    auto_fraction = 0.5
    """The auto radius: half the median gap between edits (radii halve at a split anyway)."""

    def add(self, router, key: np.ndarray, label: str, block: int, edit: int,
            subject: str | None) -> AddResult:
        """New, join or split against the nearest cluster (router.py's docstring)."""
        r0 = router.init_radius
        clusters, dists = router.nearest(key, 1)
        if clusters.shape[1] == 0 or dists[0, 0] > router.radii[clusters[0, 0]] + r0:
            cluster = router.new_cluster(key, label, block, r0)
            router.add_member(key, cluster, edit, subject)
            return AddResult(cluster, "new")
        near, d = int(clusters[0, 0]), float(dists[0, 0])
        if router.labels[near] == label:
            router.add_member(key, near, edit, subject)
            members = router.member_keys[router.member_cluster == near]
            router.set_centre(near, members.mean(0) if router.metric == "euclidean" else _mean_direction(members))
            router.set_radius(near, max(r0, float(distance(members, router.centres[near], router.metric).max())))
            reassigned = int(router.blocks[near]) != block
            router.set_block(near, block)
            self.keep_clear_of_negatives(router, near)
            return AddResult(near, "join", reassigned)
        new_radius = min(r0, SHRINK * d / 2.0)
        for cluster in self.shrink_off(router, near, key, d):
            gap = float(distance(router.centres[cluster][None], key, router.metric)[0])
            new_radius = min(new_radius, SHRINK * gap / 2)
        cluster = router.new_cluster(key, label, block, new_radius)
        router.add_member(key, cluster, edit, subject)
        return AddResult(cluster, "split")

    def clusters_to_clear(self, router, key: np.ndarray) -> list[tuple[int, float]]:
        """Edit clusters whose radius covers `key`, among the 64 nearest centres."""
        clusters, dists = router.nearest(key, 64)
        return [(int(c), float(d)) for c, d in zip(clusters[0], dists[0])
                if router.labels[c] != NEGATIVE and d <= router.radii[c]]

    def keep_clear_of_negatives(self, router, cluster: int) -> None:
        """After a cluster grew: shrink it off any negative it now covers."""
        clusters, dists = router.nearest(router.centres[cluster], 64)
        for other, d in zip(clusters[0], dists[0]):
            if router.labels[other] == NEGATIVE and d <= router.radii[cluster]:
                self.shrink_off(router, cluster, router.centres[other], float(d))

    def shrink_off(self, router, cluster: int, key: np.ndarray, d: float) -> list[int]:
        """The split rule's shrink: `cluster` (at distance d from `key`) to just under d / 2, and its
        members left outside get clusters of their own; returns the clusters whose centre moved or was made."""
        router.set_radius(cluster, min(float(router.radii[cluster]), SHRINK * d / 2.0))
        return self.detach_outside(router, cluster, key)

    def detach_outside(self, router, cluster: int, key: np.ndarray) -> list[int]:
        """Members left outside a shrunken cluster become clusters of their own (same label and block).

        Their key is then a centre, so the edit still routes to the block that learned it. If no
        member is left inside, the cluster itself is re-centred on its first member rather than
        left covering an empty region. Each such cluster keeps clear of `key`, the key causing the
        split. Returns the clusters whose centre moved or was created.
        """
        members = np.flatnonzero(router.member_cluster == cluster)
        dists = distance(router.member_keys[members], router.centres[cluster], router.metric)
        outside = [int(m) for m, dm in zip(members, dists) if dm > router.radii[cluster]]
        if not outside:
            return []
        changed = []
        if len(outside) == len(members):
            first = outside.pop(0)
            router.set_centre(cluster, router.member_keys[first])
            changed.append(cluster)
        for m in outside:
            router.move_member(m, router.new_cluster(router.member_keys[m], router.labels[cluster],
                                                     int(router.blocks[cluster]), router.init_radius))
            changed.append(int(router.member_cluster[m]))
        for c in changed:
            gap = SHRINK * float(distance(router.centres[c][None], key, router.metric)[0]) / 2
            router.set_radius(c, min(float(router.radii[c]), router.init_radius, gap))
        return changed


class VoronoiPolicy:
    """Every key is its own centre of radius r0 and nothing shrinks: the nearest centre decides between
    edits, and negatives (centres with no block) take their own cells."""

    name = "voronoi"
    auto_fraction = 1.0
    """The auto radius: the whole median gap between edits (the nearest centre decides, not the radius)."""

    def add(self, router, key: np.ndarray, label: str, block: int, edit: int,
            subject: str | None) -> "AddResult":
        cluster = router.new_cluster(key, label, block, router.init_radius)
        router.add_member(key, cluster, edit, subject)
        return AddResult(cluster, "new")

    def clusters_to_clear(self, router, negative: np.ndarray) -> list[tuple[int, float]]:
        return []

    def shrink_off(self, router, cluster: int, key: np.ndarray, d: float) -> list[int]:
        return []


POLICIES = {policy.name: policy for policy in (SplitPolicy(), VoronoiPolicy())}
"""The radius policies by name, as configs and manifests spell them (config.POLICIES lists the names)."""


def _mean_direction(keys: np.ndarray) -> np.ndarray:
    """Centre of a cosine cluster: the mean of the unit vectors."""
    unit = keys / np.linalg.norm(keys, axis=1, keepdims=True).clip(min=1e-12)
    return unit.mean(0).astype(np.float32)
