"""An hnswlib index file checked in full before hnswlib reads it.

hnswlib trusts its file: an entry point, neighbour id or list length out of range makes it read
outside its buffers (a forged bundle segfaulted melo). So the bytes are parsed here first, against
what melo writes (hnswlib 0.8's layout, melo's M) and against the router's own arrays: the header,
every level-0 and upper-level link list (counts within bounds, ids naming elements that exist at
that level), the labels (each cluster once), the deleted marks (exactly the retired clusters) and
the stored vectors (the cluster centres, normalised for cosine). The saved index is then only a
cache of the centres whose every byte hnswlib will follow has been checked.

Layout (hnswlib/hnswalg.h, saveIndex): a 96-byte header, then per element `size_data_per_element`
bytes (link count u16, deleted-mark byte, a spare byte, maxM0 u32 neighbour ids, the vector, the u64
label), then per element a u32 byte length and its upper-level lists (per level: u32 count, maxM ids).
"""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np

from melo_cli.errors import BundleError

HEADER = struct.Struct("<QQQQQQiIQQQdQ")
"""offsetLevel0, max_elements, count, size_data_per_element, label_offset, offset_data, maxlevel,
enterpoint, maxM, maxM0, M, mult, ef_construction."""
NO_ENTRY = 0xFFFFFFFF


def header(data: bytes, where: Path) -> dict:
    if len(data) < HEADER.size:
        raise BundleError(f"{where}: the router index is truncated")
    names = ("offset_level0", "max_elements", "count", "size_per_element", "label_offset", "offset_data",
             "max_level", "entry", "max_m", "max_m0", "m", "mult", "ef_construction")
    return dict(zip(names, HEADER.unpack_from(data)))


def dimensions(data: bytes, where: Path) -> tuple[int, int]:
    """(key dimension, element count) as the header states them, for a first comparison with the manifest."""
    h = header(data, where)
    if not 0 <= h["offset_data"] < h["label_offset"] <= h["size_per_element"] < 1 << 24 \
            or h["count"] > h["max_elements"] or len(data) < HEADER.size + h["count"] * h["size_per_element"]:
        raise BundleError(f"{where}: the router index header does not describe this file")
    return (h["label_offset"] - h["offset_data"]) // 4, h["count"]


def check(data: bytes, *, dim: int, centres: np.ndarray, retired: np.ndarray, metric: str, m: int,
          where: Path) -> None:
    """Raise BundleError unless `data` is an index melo could have written for these clusters."""
    def bad(what: str) -> BundleError:
        return BundleError(f"{where}: the router index is damaged or forged ({what})")

    h = header(data, where)
    n = len(centres)
    links0 = 4 + 4 * 2 * m
    expected = {"offset_level0": 0, "count": n, "m": m, "max_m": m, "max_m0": 2 * m, "offset_data": links0,
                "label_offset": links0 + 4 * dim, "size_per_element": links0 + 4 * dim + 8}
    for name, value in expected.items():
        if h[name] != value:
            raise bad(f"header field {name} is {h[name]}, expected {value}")
    if h["max_elements"] < n or h["max_elements"] > 1 << 40 or not math.isclose(h["mult"], 1 / math.log(m)):
        raise bad("header sizes")
    size = h["size_per_element"]
    body = HEADER.size + n * size
    if len(data) < body:
        raise BundleError(f"{where}: the router index is truncated")
    if n == 0:
        if h["entry"] != NO_ENTRY or h["max_level"] != -1 or len(data) != body:
            raise bad("an empty index with an entry point")
        return
    if not 0 <= h["entry"] < n or not 0 <= h["max_level"] < 64:
        raise bad(f"entry point {h['entry']} at level {h['max_level']}")

    element = np.dtype([("count", "<u2"), ("mark", "u1"), ("spare", "u1"), ("ids", "<u4", (2 * m,)),
                        ("vector", "<f4", (dim,)), ("label", "<u8")])
    level0 = np.frombuffer(data, element, n, HEADER.size)  # zero-copy views of each field
    counts = level0["count"].astype(np.int64)
    if (counts > 2 * m).any() or (level0["mark"] > 1).any():
        raise bad("a level-0 link count or deleted mark")
    used = np.arange(2 * m)[None, :] < counts[:, None]
    if (level0["ids"][used] >= n).any():
        raise bad("a level-0 neighbour id past the elements")
    labels = level0["label"]
    if (labels >= n).any() or np.bincount(labels.astype(np.int64), minlength=n).max(initial=0) != 1:
        raise bad("labels are not the clusters, each once")
    order = np.empty(n, np.int64)
    order[labels.astype(np.int64)] = np.arange(n)  # order[cluster] = the element holding it
    if not np.array_equal(level0["mark"][order].astype(bool), np.asarray(retired, bool)):
        raise bad("deleted marks are not the retired clusters")
    stored = level0["vector"][order]
    want = np.asarray(centres, np.float32)
    if metric == "cosine":  # hnswlib stores unit vectors for cosine: equal up to rounding
        want = want / np.maximum(np.linalg.norm(want, axis=1, keepdims=True), 1e-30)
        same = float(np.abs(stored - want).max(initial=0.0)) <= 1e-5
    else:  # l2 stores the centres as given: equal bit for bit
        same = stored.tobytes() == want.tobytes()
    if not same:
        raise bad("stored vectors are not the cluster centres")

    per_level = 4 + 4 * m
    levels, lists, offset = np.zeros(n, np.int64), {}, body
    for element in range(n):  # upper-level lists: only ~1 element in M has any
        if offset + 4 > len(data):
            raise BundleError(f"{where}: the router index is truncated")
        (length,) = struct.unpack_from("<I", data, offset)
        offset += 4
        if length:
            if length % per_level or length // per_level > h["max_level"] or offset + length > len(data):
                raise bad(f"upper link lists of element {element}")
            levels[element] = length // per_level
            lists[element] = np.frombuffer(data, "<u4", length // 4, offset).reshape(-1, 1 + m).astype(np.int64)
            offset += length
    if offset != len(data):
        raise bad("bytes after the last link list")
    if levels[h["entry"]] != h["max_level"]:
        raise bad("the entry point is not on the top level")
    for element, table in lists.items():
        for level, row in enumerate(table, 1):
            count, neighbours = row[0], row[1:1 + min(int(row[0]), m)]
            if count > m or (neighbours >= n).any() or (levels[neighbours] < level).any():
                raise bad(f"a level-{level} link list of element {element}")
