"""Make the sample edit and holdout files from the public datasets in ../shared/data.

Run from the repository root:  python sample_edits/make_samples.py [--shared DIR]
The outputs are committed; this script is how they were made, so nobody edits them by hand.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

HERE = Path(__file__).resolve().parent


def shared_dir(cli: str | None) -> Path:
    return Path(cli or os.environ.get("MELO_SHARED") or HERE.parent.parent / "shared")


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    print(f"wrote {path.relative_to(HERE.parent)} ({len(records)} lines)")


def counterfact(shared: Path, n: int, holdout: int) -> None:
    data = json.loads((shared / "data" / "counterfact-edit.json").read_text(encoding="utf-8"))
    edits = [{"id": f"cf-{r['case_id']}", "input": r["prompt"], "target": r["target_new"],
              "rephrases": [r["rephrase_prompt"]], "subject": r["subject"]} for r in data[:n]]
    write_jsonl(HERE / f"counterfact-{n}.jsonl", edits)
    # holdout: the locality prompts of other records (neighbours that share a relation)
    hold = [{"input": r["locality_prompt"], "target": r["locality_ground_truth"]} for r in data[n:n + holdout]]
    write_jsonl(HERE / "counterfact-holdout.jsonl", hold)


def zsre(shared: Path, n: int, holdout: int) -> None:
    """The first n records whose new answer is ASCII: the shipped tiny Llama (TinyStories) never wrote
    another byte, and its byte tokens share one output row within a few percent, so it cannot learn
    "Işın Karaca" (record 17) at all."""
    data = json.loads((shared / "data" / "zsre-mend-train-1k.json").read_text(encoding="utf-8"))
    usable = [i for i, r in enumerate(data) if r["alt"].strip() and r["alt"].isascii()][:n]
    edits = [{"id": f"zsre-{i}", "input": data[i]["src"], "target": data[i]["alt"], "rephrases": [data[i]["rephrase"]],
              "subject": data[i]["subject"]} for i in usable]
    write_jsonl(HERE / f"zsre-{n}.jsonl", edits)
    after = usable[-1] + 1
    hold = [{"input": r["loc"], "target": r["loc_ans"]} for r in data[after:after + holdout]]
    write_jsonl(HERE / "zsre-holdout.jsonl", hold)


def classification(shared: Path, n: int, holdout: int) -> None:
    """Relation-type classification from zsRE questions: is the question about a place, a person, ...?

    The label comes from the question's wording (a deterministic rule, written down here), and an
    edit flips an item to another label, as a corrected annotation would.
    """
    data = json.loads((shared / "data" / "zsre-mend-train-1k.json").read_text(encoding="utf-8"))
    rules = [("place", ("country", "city", "located", "place", "where")),
             ("person", ("who", "father", "mother", "spouse", "sibling", "child")),
             ("time", ("when", "date", "year")),
             ("other", ())]
    def label(question: str) -> str:
        q = question.lower()
        return next(name for name, words in rules if not words or any(w in q for w in words))
    labelled = [{"input": r["src"], "label": label(r["src"]), "rephrase": r["rephrase"], "subject": r["subject"]}
                for r in data]
    names = [name for name, _ in rules]
    edits = [{"id": f"cls-{i}", "input": r["input"], "target": names[(names.index(r["label"]) + 1) % len(names)],
              "rephrases": [r["rephrase"]], "subject": r["subject"]} for i, r in enumerate(labelled[:n])]
    write_jsonl(HERE / f"classification-{n}.jsonl", edits)
    write_jsonl(HERE / "classification-train.jsonl",
                [{"input": r["input"], "target": r["label"]} for r in labelled[n + holdout:n + holdout + 200]])
    write_jsonl(HERE / "classification-holdout.jsonl",
                [{"input": r["input"], "target": r["label"]} for r in labelled[n:n + holdout]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", help="the shared folder (default: $MELO_SHARED or ../shared)")
    args = parser.parse_args()
    shared = shared_dir(args.shared)
    if not (shared / "data").is_dir():
        raise SystemExit(f"no data folder under {shared}; pass --shared")
    counterfact(shared, 20, 50)
    zsre(shared, 20, 50)
    classification(shared, 20, 50)


if __name__ == "__main__":
    main()
