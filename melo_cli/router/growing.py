"""An array that grows by doubling: the router appends a centre per edit and a member per edit, and
`np.append` / `np.vstack` copied every array whole each time, O(N²) over N edits (10,000 edits: about
150 GB of copying for the member keys alone)."""

from __future__ import annotations

import numpy as np


class Growing:
    """Rows of one dtype and row shape; `view` is the filled part (writes through it land in place)."""

    def __init__(self, row_shape: tuple[int, ...], dtype, rows: np.ndarray | None = None):
        self.row_shape, self.dtype = tuple(row_shape), np.dtype(dtype)
        self.data = np.zeros((16, *self.row_shape), self.dtype)
        self.n = 0
        if rows is not None:
            self.assign(rows)

    @property
    def view(self) -> np.ndarray:
        return self.data[:self.n]

    def append(self, row) -> int:
        """Add one row; its index."""
        if self.n == len(self.data):
            bigger = np.zeros((2 * len(self.data), *self.row_shape), self.dtype)
            bigger[:self.n] = self.data[:self.n]
            self.data = bigger
        self.data[self.n] = row
        self.n += 1
        return self.n - 1

    def assign(self, rows: np.ndarray) -> None:
        """Replace every row (with room to grow)."""
        rows = np.asarray(rows, self.dtype).reshape(-1, *self.row_shape)
        self.data = np.zeros((max(16, 2 * len(rows)), *self.row_shape), self.dtype)
        self.data[:len(rows)] = rows
        self.n = len(rows)
