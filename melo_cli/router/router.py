"""The router, MELO's inner vector database: edit clusters with a radius, searched with hnswlib.

A cluster has a centre, a radius, a label (the target it teaches) and the LoRA block that holds
its edit. Keys of new edits are added with three rules (after GRACE and MELO), against the
nearest cluster at distance d:
- d > r + r0: a new cluster of radius r0 (the init radius);
- same label: the key joins; the centre becomes the mean of the members and the radius grows to
  cover every member (at least r0);
- different label: a new cluster, and both radii shrink to just under d/2 so they do not overlap.
An input routes to the nearest cluster when its key lies within that cluster's radius, else to
no block (the base model).

A key of another label at (nearly) the same place as a member, closer than SAME_KEY * r0, is a
correction, not a neighbour: the member is retired (its edit superseded) rather than split against,
since a split there would shrink both radii to float noise and let padding decide the route. A
cluster left with no member is retired: removed from the search, its block kept untouched.

Entity check: each edit routes on an entity (its subject, or the name found in its input:
entities.py). A cluster whose members have entities is a candidate for an input only if the
input names one of them as people write names (entities.py; bundles of format 1 match their
subjects as whole names, subjects.py); the nearest candidate then decides as above.

The rules themselves are radius policies (policies.py: split, voronoi). The centres live in an hnswlib
index (centre_index.py); everything else is in plain arrays saved with safetensors.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from melo_cli.config import METRICS
from melo_cli.router import entities, subjects
from melo_cli.router.centre_index import CentreIndex
from melo_cli.router.growing import Growing
from melo_cli.router.member_entities import MemberEntities
from melo_cli.router.policies import POLICIES
from melo_cli.router.vocabulary import NEGATIVE, NO_BLOCK, RETIRED, SAME_KEY, AddResult, Route, distance


class Router:
    """Clusters of edit keys, their radii and blocks, and the hnswlib index over their centres."""

    M = CentreIndex.M

    def __init__(self, dim: int, metric: str = "euclidean", init_radius: float = 1.0,
                 ef: int = 64, M: int = M, margin: float = 0.0, policy: str = "split", entity_match: str = "forms"):
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
        if policy not in POLICIES:
            raise ValueError(f"unknown radius policy {policy!r}; choose one of {', '.join(POLICIES)}")
        self.policy = POLICIES[policy]
        self.passes = {"forms": entities.passes, "whole": subjects.passes}[entity_match]
        """Whether a text names one of a cluster's entities: as people write names (forms) or, for
        bundles of format 1, the whole subject as written (whole)."""
        self.dim, self.metric, self.init_radius = dim, metric, float(init_radius)
        self.ef, self.M, self.margin = ef, M, float(margin)
        self._columns = {"centres": Growing((dim,), np.float32), "radii": Growing((), np.float32),
                         "blocks": Growing((), np.int64), "retired": Growing((), np.bool_),
                         "member_keys": Growing((dim,), np.float32), "member_cluster": Growing((), np.int64),
                         "member_edit": Growing((), np.int64)}
        self._by_edit: dict[int, list[int]] = {}
        """Edit number -> its members (an index, so finding an edit's cluster is not a scan of all members)."""
        self.labels: list[str] = []
        self.member_entities = MemberEntities(whole=entity_match == "whole")
        """The entity each member routes on, and the gate's table per cluster (member_entities.py)."""
        self.index = CentreIndex(dim, metric, ef, M=M)

    # -- the arrays: grown in place (growing.py); reading one gives its filled rows, a view ----------
    centres = property(lambda self: self._columns["centres"].view,
                       lambda self, rows: self._columns["centres"].assign(rows))
    radii = property(lambda self: self._columns["radii"].view, lambda self, rows: self._columns["radii"].assign(rows))
    blocks = property(lambda self: self._columns["blocks"].view,
                      lambda self, rows: self._columns["blocks"].assign(rows))
    retired = property(lambda self: self._columns["retired"].view,
                       lambda self, rows: self._columns["retired"].assign(rows))
    member_keys = property(lambda self: self._columns["member_keys"].view,
                           lambda self, rows: self._columns["member_keys"].assign(rows))
    member_cluster = property(lambda self: self._columns["member_cluster"].view,
                              lambda self, rows: self._set_member_clusters(rows))
    member_edit = property(lambda self: self._columns["member_edit"].view, lambda self, rows: self._set_edits(rows))
    member_subjects = property(lambda self: self.member_entities.names)
    member_short = property(lambda self: self.member_entities.short)

    def _set_member_clusters(self, rows: np.ndarray) -> None:
        self._columns["member_cluster"].assign(rows)
        self.member_entities.stale()

    def _set_edits(self, rows: np.ndarray) -> None:
        self._columns["member_edit"].assign(rows)
        self._by_edit = {}
        for member, edit in enumerate(self.member_edit.tolist()):
            self._by_edit.setdefault(int(edit), []).append(member)

    # -- search ----------------------------------------------------------------------------
    def nearest(self, keys: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """(clusters, distances), each (n, k); empty router -> (n, 0) arrays."""
        keys = np.ascontiguousarray(keys, dtype=np.float32).reshape(-1, self.dim)
        k = min(k, self.n_live)
        if k == 0:
            return np.zeros((len(keys), 0), np.int64), np.zeros((len(keys), 0), np.float32)
        return self.index.nearest(keys, k)

    # -- the cluster rules ------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.labels)

    @property
    def n_live(self) -> int:
        """Clusters the search can return (all but the retired)."""
        return len(self.labels) - int(self.retired.sum())

    # -- the public mutators (radius policies and block compaction change the router only through these) --
    def new_cluster(self, key: np.ndarray, label: str, block: int, radius: float) -> int:
        """A new cluster centred on `key`; its number."""
        cluster = len(self)
        for name, value in (("centres", key), ("radii", radius), ("blocks", block), ("retired", False)):
            self._columns[name].append(value)
        self.labels.append(label)
        self.index.put(cluster, self.centres[cluster])
        return cluster

    def add_member(self, key: np.ndarray, cluster: int, edit: int,
                   subject: str | tuple[str, tuple[str, ...]] | None = None) -> None:
        """Edit `edit`'s key joins `cluster`, routing on `subject` (a name, or (name, short forms))."""
        name, short = (subject, ()) if subject is None or isinstance(subject, str) else subject
        self.member_entities.append(name, short)
        self._columns["member_keys"].append(key)
        self._columns["member_cluster"].append(cluster)
        member = self._columns["member_edit"].append(edit)
        self._by_edit.setdefault(int(edit), []).append(member)

    def set_centre(self, cluster: int, centre: np.ndarray) -> None:
        """Move a cluster's centre (the index follows)."""
        self.centres[cluster] = centre
        self.index.put(cluster, self.centres[cluster])

    def set_radius(self, cluster: int, radius: float) -> None:
        self.radii[cluster] = radius

    def set_block(self, cluster: int, block: int) -> None:
        """Route a cluster to another block (its members were trained into it)."""
        self.blocks[cluster] = block

    def move_member(self, member: int, cluster: int) -> None:
        """Put a member in another cluster (RETIRED: in none); the gate's table follows."""
        self.member_cluster[member] = cluster
        self.member_entities.stale()

    def add(self, key: np.ndarray, label: str, block: int, edit: int,
            subject: str | tuple[str, tuple[str, ...]] | None = None) -> AddResult:
        """Add the key of edit `edit` (label = its target, `subject` the entity it routes on, if any)
        trained into `block`."""
        key = np.asarray(key, np.float32).reshape(self.dim)
        superseded = self._retire_same_key(key, label)
        result = self.policy.add(self, key, label, block, edit, subject)
        result.superseded = superseded
        return result

    def _retire_same_key(self, key: np.ndarray, label: str) -> tuple[int, ...]:
        """Retire the live edit members of another label whose key is this key (a correction)."""
        if not len(self.member_keys):
            return ()
        d = distance(self.member_keys, key, self.metric)  # all members (no copy), the dead ones masked after
        near = np.flatnonzero((d <= SAME_KEY * self.init_radius) & (self.member_cluster >= 0))
        same = [int(m) for m in near if self.labels[self.member_cluster[m]] not in (label, NEGATIVE)]
        return tuple(int(self.member_edit[m]) for m in same if self._retire_member(m))

    def retire_edit(self, edit: int) -> bool:
        """Take edit `edit` out of routing (it was superseded); False if it was not a live member."""
        members = [m for m in self._by_edit.get(int(edit), []) if self.member_cluster[m] >= 0]
        return any([self._retire_member(int(m)) for m in members])

    def _retire_member(self, member: int) -> bool:
        """Detach one member; a cluster left empty leaves the search (its block stays as it is)."""
        cluster = int(self.member_cluster[member])
        if cluster < 0:
            return False
        self.move_member(member, RETIRED)
        if not np.any(self.member_cluster == cluster):
            self.index.delete(cluster)
            self.retired[cluster] = True
        return True

    def add_negative(self, key: np.ndarray) -> AddResult:
        """Add the key of an input that must keep its output: a centre with no block.

        Every edit cluster whose radius covers it shrinks to just under half the distance (the
        split rule), so the negative routes to no block; negatives never join each other, so each
        stays a centre where it is.
        """
        key = np.asarray(key, np.float32).reshape(self.dim)
        covering = self.policy.clusters_to_clear(self, key)  # before the negative is a centre itself
        cluster = self.new_cluster(key, NEGATIVE, NO_BLOCK, self.init_radius)
        self.add_member(key, cluster, -1)
        for other, d in covering:
            self.policy.shrink_off(self, other, key, d)
        return AddResult(cluster, "negative")

    def route(self, keys: np.ndarray, texts: list[str] | None = None) -> list[Route]:
        """For each key: the nearest candidate cluster's block when inside its radius, else no block.

        Candidates are the clusters whose subject gate the input's text passes (all of them without
        texts or subjects). With a margin m > 0 the nearest candidate must also be clearly nearest:
        every candidate of another label (negatives included) must be at least (1 + m) times as far.
        """
        names = self.member_entities.by_cluster(self.member_cluster) if texts is not None else {}
        gated = bool(names)
        k = 16 if gated else 8 if self.margin > 0 else 1
        clusters, dists = self.nearest(keys, k)
        wanted = None if self.margin > 0 else 1  # without a margin only the nearest candidate matters
        routes = []
        for row in range(len(clusters)):
            found = []
            for c, d in zip(clusters[row].tolist(), dists[row].tolist()):
                if not gated or self.passes(names.get(c), texts[row]):
                    found.append((c, d))
                    if len(found) == wanted:
                        break
            if not found:
                routes.append(Route(None, None, NO_BLOCK))
                continue
            c, d = found[0]
            inside = d <= float(self.radii[c])
            if inside and self.margin > 0:
                rivals = [dr for cr, dr in found[1:] if self.labels[cr] != self.labels[c]]
                inside = not rivals or rivals[0] >= (1.0 + self.margin) * d
            routes.append(Route(c, d, int(self.blocks[c]) if inside else NO_BLOCK))
        return routes

    def entities_of(self, cluster: int) -> list[dict]:
        """The entities a cluster's live members route on: [{"name", "short"}] (empty: none)."""
        return self.member_entities.of_cluster(self.member_cluster, cluster)

    def members_of(self, cluster: int) -> np.ndarray:
        """Edit numbers of the live members of a cluster."""
        return self.member_edit[self.member_cluster == cluster]

    def live_blocks(self) -> set[int]:
        """The LoRA blocks some live edit cluster still routes to (negatives and retired clusters aside)."""
        return {int(b) for b, retired, label in zip(self.blocks, self.retired, self.labels)
                if b >= 0 and not retired and label != NEGATIVE}

    def member_routes(self, texts: list[str]) -> dict[int, Route]:
        """The route each member edit's stored key takes now, by edit number (`texts[n]` is edit n's
        input, for the subject gate): one search for all, and no model, since members keep their keys."""
        numbers = sorted({int(e) for e, c in zip(self.member_edit, self.member_cluster) if c >= 0 and e >= 0})
        if not numbers:
            return {}
        keys = self.member_keys[[self._by_edit[n][-1] for n in numbers]]
        return dict(zip(numbers, self.route(keys, [texts[n] for n in numbers])))

    def cluster_of(self, edit: int) -> int | None:
        """The cluster edit `edit` is a live member of, or None (superseded, or never added)."""
        found = [m for m in self._by_edit.get(int(edit), []) if self.member_cluster[m] >= 0]
        return int(self.member_cluster[found[-1]]) if found else None

    def members_of_edit(self, edit: int) -> list[int]:
        """The member indices of edit `edit` (its key, live or retired)."""
        return list(self._by_edit.get(int(edit), []))

    # -- persistence ------------------------------------------------------------------------
    def arrays(self) -> dict[str, np.ndarray]:
        """Everything but the index, as arrays for safetensors."""
        return {
            "centres": self.centres, "radii": self.radii, "blocks": self.blocks,
            "member_keys": self.member_keys, "member_cluster": self.member_cluster,
            "member_edit": self.member_edit, "retired": self.retired.astype(np.uint8),
        }

    def save_index(self, path: Path) -> None:
        self.index.save(path)

    @classmethod
    def restore(cls, arrays: dict[str, np.ndarray], labels: list[str], index_path: Path,
                metric: str, init_radius: float, margin: float = 0.0, policy: str = "split",
                subjects: list[str | None] | None = None, entity_match: str = "forms",
                short: list[list[str]] | None = None) -> "Router":
        """Rebuild a router from its saved arrays and the hnswlib index file."""
        centres = arrays["centres"].astype(np.float32)
        router = cls(centres.shape[1], metric, init_radius, margin=margin, policy=policy,  # a bad name: ValueError
                     entity_match=entity_match)
        router.centres, router.radii = centres, arrays["radii"].astype(np.float32)
        router.blocks = arrays["blocks"].astype(np.int64)
        router.member_keys = arrays["member_keys"].astype(np.float32)
        router.member_cluster = arrays["member_cluster"].astype(np.int64)
        router.member_edit = arrays["member_edit"].astype(np.int64)
        router.retired = (arrays["retired"].astype(np.bool_) if "retired" in arrays
                          else np.zeros(len(router.radii), np.bool_))
        router.labels = list(labels)
        n = len(router.member_edit)
        router.member_entities.assign(list(subjects) if subjects is not None else [None] * n,
                                      [tuple(s) for s in short] if short is not None else [()] * n)
        router.index = CentreIndex(router.dim, metric, router.ef, max(16, len(router.labels)), index_path, router.M)
        return router
