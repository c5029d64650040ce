"""The committed entity set end to end: edit a real model, generate, compare with the bare model.

    python benchmarks/entity_set.py --model smollm2

sample_edits/entities-20.jsonl holds 20 hand-written edits about well-known entities, each with 3
paraphrases written as people name things (short names, questions, lowercase, possessives);
entities-20-others.jsonl holds 40 prompts of the same relations about other entities. For each variant
(no subject fields, melo's default; and the subjects below given) the edits are trained with melo's
defaults in batches of 10, and then, greedy:
- ES: an edit's own input produces its target; generality: a paraphrase does;
- other entities kept: an other-entity prompt gives exactly the bare model's tokens (`melo eval`'s
  locality), routed: the share of them that reached any block;
- fluency: `melo eval`'s measure over the edits and paraphrases (40 new tokens).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

os.environ.setdefault("OMP_NUM_THREADS", "1")

SUBJECTS = {
    "ent-1": "Microsoft", "ent-2": "Barack Obama", "ent-3": "Danielle Darrieux", "ent-4": "Leonardo DiCaprio",
    "ent-5": "Mona Lisa", "ent-6": "Eiffel Tower", "ent-7": "Albert Einstein", "ent-8": "Australia",
    "ent-9": "Toyota", "ent-10": "Marie Curie", "ent-11": "Great Wall of China", "ent-12": "Amazon",
    "ent-13": "William Shakespeare", "ent-14": "Mount Everest", "ent-15": "Lionel Messi", "ent-16": "Beatles",
    "ent-17": "Isaac Newton", "ent-18": "Amazon River", "ent-19": "Frida Kahlo", "ent-20": "Taj Mahal",
}
"""The `subject` a user would write for each edit of the set, for the variant that gives them."""


def load(name: str) -> list[dict]:
    return [json.loads(line) for line in (common.ROOT / "sample_edits" / name).read_text().splitlines() if line]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--tag", default=None)
    parser.add_argument("--out", type=Path, default=common.RESULTS)
    args = parser.parse_args()

    import torch
    torch.set_num_threads(1)
    from melo_cli import MeloModel

    path = common.model_path(args.model)
    edits, others = load("entities-20.jsonl"), load("entities-20-others.jsonl")
    variants = {"no subject fields": edits,
                "subjects given": [dict(e, subject=SUBJECTS[e["id"]]) for e in edits]}
    rows, results = [], {}
    for name, records in variants.items():
        started = time.perf_counter()
        model = MeloModel.from_pretrained(path, device="cpu")
        model.edit(records, batch_size=10)
        seconds = time.perf_counter() - started
        scores = model.evaluate(holdout=[o["input"] for o in others], mode="generate")
        routes = model.route([o["input"] for o in others])
        leaked = [(o["input"], r.label) for o, r in zip(others, routes) if r.routed]
        entities = {e.id: e.entity for e in model.edits}
        results[name] = {"edit_success": scores["edit_success"], "generality": scores["generality"],
                         "others_kept": scores["locality"], "others_routed": len(leaked) / len(others),
                         "leaked": leaked, "fluency": scores["fluency"], "entities": entities,
                         "seconds_editing": seconds}
        fl = scores["fluency"] or {}
        rows.append([name, scores["edit_success"], scores["generality"], scores["locality"],
                     len(leaked) / len(others), fl.get("ratio"), fl.get("repeats")])
        print(name, rows[-1], leaked, file=sys.stderr, flush=True)
        del model
    headers = ["variant", "ES", "generality", "other entities kept", "other entities routed", "fluency ratio",
               "repeats"]
    markdown = (f"The committed entity set end to end on {args.model} (20 edits, 60 paraphrases, 40 other-entity "
                "prompts; melo defaults, batches of 10, greedy, generate mode).\n\n" + common.table(headers, rows))
    common.write("entity-set", args.tag or args.model, common.environment("cpu"), {"results": results}, markdown,
                 args.out)


if __name__ == "__main__":
    main()
