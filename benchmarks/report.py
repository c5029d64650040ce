"""Rebuild benchmarks/README.md from results/*.md, so the tables shown are exactly the ones measured.

    python benchmarks/report.py
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = ["editing-n100", "editing-n1000", "keys-latest", "overhead-n1000", "router-latest", "startup-idle",
         "startup-busy2"]
TITLES = {"editing": "Editing: melo vs a GRACE-style codebook vs plain LoRA fine-tuning",
          "keys": "Keys: which router key generalises (router level)",
          "overhead": "Overhead: generate and eval latency with a 1,000-edit bundle",
          "router": "Router: hnswlib vs brute-force search",
          "startup": "Start-up and threads: what a user waits for"}

INTRO = """# melo benchmarks

Five benchmarks, each a script that runs from a clean checkout (after the README's install) and
writes `results/NAME-TAG.json` (everything measured) and `results/NAME-TAG.md` (the table below).
This page is rebuilt from those files by `python benchmarks/report.py`; every table carries the date,
machine, commit and exact command of its run. A smoke test runs each script at tiny sizes in the
default test run (tests/test_benchmarks_smoke.py); the real runs stay outside CI.

| script | what it measures | command |
| --- | --- | --- |
| `editing.py` | sequential editing of N CounterFact records on the tiny Llama: melo (defaults), melo-encoder (MiniLM keys, voronoi, margin 0.2, negatives), a GRACE-style codebook and plain LoRA fine-tuning; ES, generality, locality (teacher-forced and generate), seconds and steps, parameters and bytes per edit | `python benchmarks/editing.py [--n 1000]` |
| `keys.py` | router-level generality and locality for every key source, pooling, metric, radius rule, margin and negatives setting, CounterFact and zsRE, T=100 and 1000 | `python benchmarks/keys.py` |
| `overhead.py` | latency of generate and teacher-forced eval with a 1,000-edit bundle vs the bare model, interleaved | `python benchmarks/overhead.py` |
| `router.py` | hnswlib lookup latency and recall@1 vs exact brute force at 1k-100k clusters, dims 384 and 4096 | `python benchmarks/router.py [--max-cells 5e8]` |
| `startup.py` | wall time of `--help`, `inspect`, a one-prompt `generate` and the quick-start `edit` as fresh processes; melo's thread choice vs torch's default, idle and beside CPU-bound processes | `python benchmarks/startup.py [--busy 2]` |

All take `--device` (`cuda` for GPU figures where one is present) and `--out DIR`.
Data: ../shared/data (CounterFact, zsRE as published; `MELO_SHARED` overrides the path).
"""


def main() -> None:
    parts = [INTRO]
    found = {p.stem: p for p in (HERE / "results").glob("*.md")}
    for stem in ORDER + sorted(set(found) - set(ORDER)):
        if stem in found:
            parts.append(f"## {TITLES.get(stem.split('-')[0], stem)} (`{stem}`)\n\n" + found[stem].read_text().strip())
    notes = HERE / "NOTES.md"
    if notes.exists():
        parts.append(notes.read_text().strip())
    (HERE / "README.md").write_text("\n\n".join(parts) + "\n")
    print(f"wrote {HERE / 'README.md'}")


if __name__ == "__main__":
    main()
