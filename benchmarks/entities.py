"""What each edit should route on besides its key: measured at the router, for each idea tried.

    python benchmarks/entities.py --model smollm2            # CounterFact T=100 and T=1000, the entity set

The router is built exactly as `melo edit` builds it (MiniLM keys, the voronoi policy, a 0.2 margin, the
auto radius, batches of 10, a block per edit), each edit with the entity an idea gives it, and then asked:
- ES (router): the edit's own input reaches its block;
- generality (router): its rephrases reach its block;
- locality (router): CounterFact's locality prompts (the same relation about another entity) reach no
  block; "unrelated" leaves out the prompts that restate an edit of the set (common.restating);
- on the committed entity set (sample_edits/entities-20*.jsonl: names as people write them), the share
  of other-entity prompts that reach no block.
A routed rephrase still needs its block to answer (benchmarks/editing.py measures end to end).

Ideas:
- none: no entity check (the sentence key alone);
- subject, whole name: the given subject fields, matched as whole names (melo before format 2);
- subject, name forms: the given subjects, matched as people write names (melo_cli/router/entities.py);
- found, orthography: the entity found in each edit's input, every capitalised word that starts a
  sentence taken as a name (no model);
- found, base-model casing: the same, the base model deciding which capitalised words are names
  (melo_cli/model/casing.py) -- melo's default (entities=auto) without subject fields;
- found + subject: the default with the subject fields given;
- swapped negatives: no entity check, but each edit's input with its found entity swapped for another
  edit's entity enters the router as a negative (the same relation about another entity).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from melo_cli import MeloModel, training
from melo_cli.model import casing  # noqa: E402
from melo_cli.edits import Edit  # noqa: E402

IDEAS = ["none", "subject, whole name", "subject, name forms", "found, orthography", "found, base-model casing",
         "found + subject", "swapped negatives"]


def entity_set() -> list[dict]:
    """The committed entity set: 20 edits with 3 rephrases each, and 2 other-entity prompts per edit."""
    root = common.ROOT / "sample_edits"
    edits = [json.loads(line) for line in (root / "entities-20.jsonl").read_text().splitlines()]
    others = [json.loads(line) for line in (root / "entities-20-others.jsonl").read_text().splitlines()]
    for edit in edits:
        edit["others"] = [o["input"] for o in others if o["id"] == edit["id"]]
    return edits


def build(model: MeloModel, records: list[dict], idea: str, keys: np.ndarray, key_of) -> dict:
    """The router `melo edit` would build for these records under this idea; route the test prompts."""
    edited = model.edited
    mode = {"none": "off", "subject, whole name": "subject-whole", "subject, name forms": "subject",
            "swapped negatives": "off"}.get(idea, "auto")
    edited.config = replace(model.config, entities=mode, init_radius=0.0)
    edited.router = None
    with_subject = idea.startswith("subject") or idea == "found + subject"
    edits = [Edit(r["input"], r["target"], subject=r.get("subject") if with_subject else None, id=str(i))
             for i, r in enumerate(records)]
    if idea == "found, orthography":
        saved, casing.proper_test = casing.proper_test, lambda *a, **k: None
    try:
        names = training.edit_entities(edited, edits)
    finally:
        if idea == "found, orthography":
            casing.proper_test = saved
    router = training.ensure_router(edited, keys)
    if idea == "swapped negatives":
        edited.config = replace(edited.config, entities="auto")
        auto = training.edit_entities(edited, edits)
        swapped = []
        for i, (edit, name) in enumerate(zip(edits, auto)):
            other = auto[(i + 1) % len(auto)]
            if name and other and other[0] != name[0]:
                swapped.append(edit.input.replace(name[0], other[0]))
        for key in key_of(swapped):
            router.add_negative(key)
    for start in range(0, len(edits), 10):
        for i in range(start, min(start + 10, len(edits))):
            router.add(keys[i], edits[i].target, i, i, names[i])
    block_of = {int(e): int(router.blocks[c]) for c, e in zip(router.member_cluster, router.member_edit) if e >= 0}

    def reach(texts: list[str], owners: list[int]) -> list[bool]:
        return [r.block == block_of[o] for r, o in zip(router.route(key_of(texts), texts), owners)]

    def kept(texts: list[str]) -> list[bool]:
        return [not r.routed for r in router.route(key_of(texts), texts)] if texts else []

    rephrases = [(p, i) for i, r in enumerate(records) for p in r["rephrases"]]
    out = {"es": float(np.mean(reach([r["input"] for r in records], list(range(len(records)))))),
           "generality": float(np.mean(reach([p for p, _ in rephrases], [i for _, i in rephrases])))}
    if "locality" in records[0]:
        loc = np.array(kept([r["locality"] for r in records]))
        unrelated = ~np.array(common.restating(records), bool)
        out.update(locality=float(loc.mean()), locality_unrelated=float(loc[unrelated].mean()))
    if "others" in records[0]:
        out["others_kept"] = float(np.mean(kept([o for r in records for o in r["others"]])))
    out["without_entity"] = sum(n is None for n in names)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--sizes", default="100,1000")
    parser.add_argument("--ideas", default=";".join(IDEAS), help="ideas separated by ;")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tag", default=None)
    parser.add_argument("--out", type=Path, default=common.RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = MeloModel.from_pretrained(common.model_path(args.model), device="cpu")
    torch.set_num_threads(args.threads)
    encoder = model.edited.encoder
    cache: dict[str, np.ndarray] = {}

    def key_of(texts: list[str]) -> np.ndarray:
        todo = [t for t in dict.fromkeys(texts) if t not in cache]
        if todo:
            cache.update(zip(todo, encoder.keys(todo).numpy().astype(np.float32)))
        return np.stack([cache[t] for t in texts]) if texts else np.zeros((0, 384), np.float32)

    sets = [("entity set", entity_set())] + [(f"CounterFact T={n}", common.counterfact(int(n)))
                                              for n in args.sizes.split(",")]
    rows, results = [], []
    for name, records in sets:
        keys = key_of([r["input"] for r in records])
        for idea in args.ideas.split(";"):
            if ("subject" in idea) and "subject" not in records[0]:
                continue
            started = time.perf_counter()
            result = build(model, records, idea, keys, key_of)
            result["seconds"] = round(time.perf_counter() - started, 2)
            results.append({"set": name, "idea": idea, **result})
            rows.append([name, idea, result["es"], result["generality"], result.get("locality"),
                         result.get("locality_unrelated"), result.get("others_kept"), result["without_entity"]])
            print(rows[-1], file=sys.stderr, flush=True)
    headers = ["set", "idea", "ES (router)", "generality (router)", "locality (router)", "locality, unrelated",
               "other entities kept", "edits without entity"]
    markdown = (f"Router-level numbers per entity idea ({args.model} for the casing test; MiniLM keys, voronoi, margin "
                "0.2, batches of 10).\n\n" + common.table(headers, rows))
    common.write("entities", args.tag or args.model, common.environment("cpu"), {"results": results}, markdown,
                 args.out)


if __name__ == "__main__":
    main()
