"""Rebuild benchmarks/README.md from results/*.md, so the tables shown are exactly the ones measured.

    python benchmarks/report.py
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = ["editing-smollm2-counterfact-n100", "editing-smollm2-counterfact-n100-shared", "editing-smollm2-counterfact-n1000", "editing-smollm2-zsre-n100",
         "editing-smollm2-zsre-n1000-cuda", "editing-gemma3-270m-counterfact-n100", "editing-gemma3-270m-counterfact-n1000",
         "cost-smollm2-counterfact-n100",
         "cost-smollm2-counterfact-n100-cuda-float32", "cost-smollm2-counterfact-n100-cuda-bfloat16",
         "scale-smollm2-n10000", "overhead-smollm2-n100", "overhead-smollm2-n100-synthetic10000", "evaltime-smollm2-n100", "routecost-smollm2-n100", "entities-smollm2",
         "entity-set-smollm2",
         "editing-n100", "editing-n1000", "keys-latest", "overhead-n1000", "router-latest", "startup-idle",
         "startup-busy2"]
TITLES = {"editing": "Editing: melo vs a GRACE-style codebook vs plain LoRA fine-tuning",
          "keys": "Keys: which router key generalises (router level)",
          "overhead": "Overhead: generate and eval latency with a 1,000-edit bundle",
          "router": "Router: hnswlib vs brute-force search",
          "startup": "Start-up and threads: what a user waits for",
          "cost": "Cost per edit: training above the frozen layers vs full passes vs the reference regime",
          "evaltime": "melo eval wall time, before and after",
          "routecost": "melo route vs generation: what routing alone costs",
          "entities": "Entities: what an edit routes on besides its key (router level)",
          "entity": "The committed entity set, end to end",
          "scale": "Scale: 10,000 sequential edits"}

INTRO = """# melo benchmarks

Eleven benchmarks, each a script that runs from a clean checkout (after the README's install) and
writes `results/NAME-TAG.json` (everything measured) and `results/NAME-TAG.md` (the table below).
This page is rebuilt from those files by `python benchmarks/report.py`; every table carries the date,
machine, commit and exact command of its run. A smoke test runs each script at tiny sizes in the
default test run (tests/test_benchmarks_smoke.py); the real runs stay outside CI.

| script | what it measures | command |
| --- | --- | --- |
| `editing.py` | sequential editing of N CounterFact or zsRE records on SmolLM2-135M, Gemma-3-270m or the tiny Llama: melo (defaults), melo-shared (a block per batch), melo-paper (the MELO paper's layout), a GRACE-style codebook and plain LoRA fine-tuning; ES, generality, locality (teacher-forced and generate), seconds and steps, parameters and bytes per edit | `python benchmarks/editing.py --model smollm2 [--n 1000] [--dataset zsre]` |
| `misses.py` | which routed CounterFact rephrases do not give their target under melo's defaults (or settings given as JSON): routed to their own edit's block or another's, and what was written instead | `python benchmarks/misses.py --model smollm2 --n 1000 [--settings '{"loss_threshold": 0.005}']` |
| `cost.py` | seconds per edit: melo (frozen prefix replayed) vs the same with full passes vs the reference code's 50 full passes per batch, with the ES/generality/locality each reaches | `python benchmarks/cost.py --model smollm2` |
| `evaltime.py` | `melo eval` wall time of this checkout vs an earlier one (100 edits + 100 paraphrases + 100 unrelated) | `python benchmarks/evaltime.py --before CHECKOUT` |
| `entities.py` | router-level ES, generality and locality for each idea of what an edit routes on besides its key (no check, subject fields as whole names or as people write names, the entity found in the input with or without the base model's casing test, entity-swapped negatives), on CounterFact T=100 and T=1000 and the committed entity set | `python benchmarks/entities.py --model smollm2` |
| `entity_set.py` | the committed entity set (sample_edits/entities-20*.jsonl) end to end on a real model, with and without subject fields: ES, generality on hand-written paraphrases, other-entity prompts kept, fluency | `python benchmarks/entity_set.py --model smollm2` |
| `scale.py` | 10,000 sequential CounterFact edits on SmolLM2 without subject fields: retention at 1k/2.5k/5k/10k, ES, generality, locality, fluency, seconds per edit by wall and CPU time, bundle bytes, load time, memory, generate overhead, `melo eval` time | `python benchmarks/scale.py --n 10000` |
| `routecost.py` | `melo route` vs generation on a real model: opening for routing (encoder keys: no base model) vs the full model, routing N prompts vs generating 20 tokens for them | `python benchmarks/routecost.py --model smollm2` |
| `keys.py` | router-level generality and locality for every key source, pooling, metric, radius rule, margin and negatives setting, CounterFact and zsRE, T=100 and 1000 | `python benchmarks/keys.py` |
| `overhead.py` | latency of generate and teacher-forced eval with a bundle of N edits (and optionally N synthetic clusters, the router's cost at scale) vs the bare model, paired repetitions | `python benchmarks/overhead.py [--model smollm2 --synthetic-clusters 10000]` |
| `router.py` | hnswlib lookup latency and recall@1 vs exact brute force at 1k-100k clusters, dims 384 and 4096 | `python benchmarks/router.py [--max-cells 5e8]` |
| `startup.py` | wall time of `--help`, `inspect`, a one-prompt `generate` and the quick-start `edit` as fresh processes; melo's thread choice vs torch's default, idle and beside CPU-bound processes | `python benchmarks/startup.py [--busy 2]` |

All take `--device` (`cuda` for GPU figures where one is present) and `--out DIR`. GPU figures come
from `benchmarks/device_check.sh`, which runs the CUDA tests (tests/test_cuda.py), `cost.py` in float32
and bfloat16 and the zsRE T=1000 run on a lent GPU machine in one call.
Data: ../shared/data (CounterFact, zsRE as published; `MELO_SHARED` overrides the path). Real models:
`benchmarks/models.py` (SmolLM2-135M-Instruct and Gemma-3-270m GGUFs from PyPI wheels). Timed runs pin
torch to one thread unless they say otherwise.
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
