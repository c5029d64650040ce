"""The hnswlib index over cluster centres, configured in one place: the router searches it, a bundle
saves it as router.hnsw (checked byte by byte before hnswlib reads it: bundle/hnsw_file.py)."""

from __future__ import annotations

from pathlib import Path

import hnswlib
import numpy as np


class CentreIndex:
    """Cluster ids -> centres, nearest-neighbour search in the router's metric, distances as the router
    measures them (hnswlib's l2 space gives squared distances; cosine gives 1 - cos already)."""

    M = 16
    """hnswlib's links per element; bundles are written (and their indexes checked) with this."""

    def __init__(self, dim: int, metric: str, ef: int, capacity: int = 16, path: Path | None = None, M: int = M):
        self.metric, self.ef = metric, ef
        self.hnsw = hnswlib.Index(space="l2" if metric == "euclidean" else "cosine", dim=dim)
        if path is None:
            self.hnsw.init_index(max_elements=capacity, ef_construction=200, M=M, random_seed=0)
        else:
            self.hnsw.load_index(str(path), max_elements=capacity)
        self.hnsw.set_ef(ef)
        self.hnsw.set_num_threads(1)

    def put(self, cluster: int, centre: np.ndarray) -> None:
        """Add cluster `cluster` at `centre`, or move it there (room doubles as clusters come)."""
        if cluster >= self.hnsw.get_max_elements():
            self.hnsw.resize_index(max(2 * self.hnsw.get_max_elements(), cluster + 1))
        self.hnsw.add_items(np.asarray(centre, np.float32).reshape(1, -1), np.array([cluster]))

    def delete(self, cluster: int) -> None:
        """Take a retired cluster out of the search."""
        self.hnsw.mark_deleted(cluster)

    def nearest(self, keys: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(clusters, distances), each (n, k), for k >= 1 live clusters."""
        self.hnsw.set_ef(max(self.ef, k))
        labels, raw = self.hnsw.knn_query(keys, k=k)
        distances = np.sqrt(np.maximum(raw, 0.0)) if self.metric == "euclidean" else raw
        return labels.astype(np.int64), distances

    def ids(self) -> np.ndarray:
        """Every cluster id the index holds (deleted ones too)."""
        return np.asarray(self.hnsw.get_ids_list(), dtype=np.int64)

    def save(self, path: Path) -> None:
        self.hnsw.save_index(str(path))
