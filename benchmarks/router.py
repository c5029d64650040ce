"""The router's lookup: hnswlib (as melo configures it) against exact brute-force search.

    python benchmarks/router.py                    # 1k, 10k, 100k clusters at key dimensions 384 and 4096

Two kinds of centres: `gaussian`, i.i.d. Gaussian vectors of full rank (the worst case for any
graph index), and `low-rank`, a 32-dimensional Gaussian latent projected to the key dimension plus
isotropic noise (sentence and hidden-state keys of real models concentrate in few directions).
Queries are stored centres plus noise of 10% of the typical nearest-neighbour distance (an input
near an edit, the case routing must get right). 100k x 4096 is skipped unless --max-cells allows it
(its build alone takes minutes on 2 cores), and gaussian centres stop at 10k unless --gaussian-max
allows more (a 100k full-rank build ran over 10 minutes here and was stopped). Recall@1 is
the share of queries whose hnswlib answer is the brute-force nearest centre. Latency is per single
query (the router is asked once per input row) and per batch of 32; build time is bulk insertion
with 2 threads; index bytes are the saved file's size.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import hnswlib  # noqa: E402

from melo_cli.router import Router  # noqa: E402


def make_centres(rng, kind: str, size: int, dim: int) -> np.ndarray:
    if kind == "gaussian":
        return rng.standard_normal((size, dim), dtype=np.float32)
    latent = rng.standard_normal((size, 32), dtype=np.float32)
    projection = rng.standard_normal((32, dim), dtype=np.float32) / np.sqrt(32)
    noise = rng.standard_normal((size, dim), dtype=np.float32) * np.float32(0.1 / np.sqrt(dim))
    return (latent @ projection + noise).astype(np.float32)  # float32 like real keys: brute force must not run in float64


def brute_force(centres: np.ndarray, norms: np.ndarray, queries: np.ndarray) -> np.ndarray:
    d = norms[None, :] - 2.0 * queries @ centres.T
    return d.argmin(1)


def per_query_ms(fn, queries, batch: int) -> float:
    started = time.perf_counter()
    for i in range(0, len(queries), batch):
        fn(queries[i:i + batch])
    return 1000 * (time.perf_counter() - started) / len(queries)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--dims", default="384,4096")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--kinds", default="low-rank,gaussian")
    parser.add_argument("--max-cells", type=float, default=1e8, help="skip size x dim above this")
    parser.add_argument("--gaussian-max", type=int, default=10000,
                        help="largest gaussian index (building 100k full-rank centres takes over 10 min on 2 cores)")
    parser.add_argument("--device", default="cpu", help="unused: hnswlib and the brute force run on the CPU")
    parser.add_argument("--tag", default="latest")
    parser.add_argument("--out", type=Path, default=common.RESULTS)
    args = parser.parse_args()
    env = common.environment(args.device)
    rng = np.random.default_rng(0)
    rows, results = [], []
    for kind in args.kinds.split(","):
      for dim in [int(d) for d in args.dims.split(",")]:
        for size in [int(s) for s in args.sizes.split(",")]:
            if size * dim > args.max_cells or (kind == "gaussian" and size > args.gaussian_max):
                print(f"skipping {kind} {size} x {dim} (over --max-cells or --gaussian-max)", file=sys.stderr)
                continue
            centres = make_centres(rng, kind, size, dim)
            sample = centres[: min(size, 2000)]
            d = ((sample[:200, None] - sample[None]) ** 2).sum(-1)
            d[np.arange(min(200, len(sample))), np.arange(min(200, len(sample)))] = np.inf
            gap = float(np.median(np.sqrt(d.min(1))))  # typical nearest-neighbour distance
            picks = rng.integers(0, size, args.queries)
            queries = (centres[picks] + rng.standard_normal((args.queries, dim), dtype=np.float32)
                       * np.float32(0.1 * gap / np.sqrt(dim))).astype(np.float32)
            router = Router(dim)  # melo's settings: M, ef_construction, ef
            index = hnswlib.Index(space="l2", dim=dim)
            started = time.perf_counter()
            index.init_index(max_elements=size, ef_construction=200, M=router.M, random_seed=0)
            index.set_num_threads(2)
            index.add_items(centres, np.arange(size))
            build = time.perf_counter() - started
            index.set_ef(router.ef)
            index.set_num_threads(1)
            with tempfile.TemporaryDirectory() as tmp:
                index.save_index(str(Path(tmp) / "i.hnsw"))
                index_bytes = (Path(tmp) / "i.hnsw").stat().st_size
            norms = (centres ** 2).sum(1)
            exact = brute_force(centres, norms, queries)
            found = index.knn_query(queries, k=1)[0][:, 0]
            recall = float((found == exact).mean())
            hnsw_1 = per_query_ms(lambda q: index.knn_query(q, k=1), queries, 1)
            hnsw_32 = per_query_ms(lambda q: index.knn_query(q, k=1), queries, 32)
            few = queries[: min(len(queries), 200 if size * dim > 1e8 else 1000)]
            brute_1 = per_query_ms(lambda q: brute_force(centres, norms, q), few, 1)
            brute_32 = per_query_ms(lambda q: brute_force(centres, norms, q), few, 32)
            entry = {"kind": kind, "clusters": size, "dim": dim, "recall_at_1": recall, "hnsw_ms_per_query": hnsw_1,
                     "hnsw_ms_per_query_batch32": hnsw_32, "brute_ms_per_query": brute_1,
                     "brute_ms_per_query_batch32": brute_32, "speedup": brute_1 / hnsw_1, "build_seconds": build,
                     "index_bytes": index_bytes}
            results.append(entry)
            rows.append([kind, size, dim, recall, hnsw_1, brute_1, brute_1 / hnsw_1, hnsw_32, brute_32, build,
                         index_bytes / 2 ** 20])
            print(rows[-1], file=sys.stderr)
            del index, centres
    markdown = common.table(["centres", "clusters", "dim", "recall@1", "hnsw ms/query", "brute ms/query", "speed-up",
                             "hnsw ms/q (batch 32)", "brute ms/q (batch 32)", "build s", "index MiB"], rows)
    common.write("router", args.tag, env, {"results": results}, markdown, args.out)


if __name__ == "__main__":
    main()
