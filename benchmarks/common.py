"""What every benchmark shares: the data, the environment it ran in, and how results are written.

Each benchmark writes `results/NAME-TAG.json` (everything measured) and `results/NAME-TAG.md` (the
table shown in benchmarks/README.md), stamped with date, machine, commit and the exact command.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
LLAMA = ROOT / "sample_models" / "stories260K"


def shared_dir() -> Path:
    return Path(os.environ.get("MELO_SHARED") or ROOT.parent / "shared")


def counterfact(n: int, offset: int = 0) -> list[dict]:
    """CounterFact records as melo edits (input, target, rephrases) plus their locality prompt."""
    data = json.loads((shared_dir() / "data" / "counterfact-edit.json").read_text(encoding="utf-8"))
    return [{"id": f"cf-{r['case_id']}", "input": r["prompt"], "target": r["target_new"],
             "rephrases": [r["rephrase_prompt"]], "locality": r["locality_prompt"],
             "locality_target": r["locality_ground_truth"], "subject": r["subject"], "ground_truth": r["ground_truth"]}
            for r in data[offset:offset + n]]


def zsre(n: int, offset: int = 0) -> list[dict]:
    """zsRE records with a new answer: 2 of the file's 1,000 (indices 534 and 723) have an empty `alt`
    and are skipped, so at most 998 exist; ids keep the file's index."""
    data = json.loads((shared_dir() / "data" / "zsre-mend-train-1k.json").read_text(encoding="utf-8"))
    usable = [(i, r) for i, r in enumerate(data) if r["alt"].strip()]
    return [{"id": f"zsre-{i}", "input": r["src"], "target": r["alt"], "rephrases": [r["rephrase"]],
             "locality": r["loc"], "locality_target": r["loc_ans"], "subject": r["subject"]}
            for i, r in usable[offset:offset + n]]


def restating(records: list[dict]) -> list[bool]:
    """For each record: does its locality prompt restate an edit of the set rather than ask about
    something unrelated? It does when it is an edit's input or rephrase, or when it names an edited
    subject (the subject gate's rule) and its expected answer is the very fact that edit replaces
    ("Windows 98, a product of" -> Microsoft beside the edit "Windows 98 was a product of" Microsoft
    -> IBM). No editor that generalises can keep such a prompt's old answer; CounterFact at T=1000
    has 11 of them (benchmarks/NOTES.md)."""
    from melo_cli.edits import normalise_input
    from melo_cli.router.subjects import gate_name, names

    asked = {normalise_input(t) for r in records for t in [r["input"], *r["rephrases"]]}
    edited = [(gate_name(r["input"], r["subject"]), str(r.get("ground_truth", "")).strip().casefold())
              for r in records if r.get("subject")]
    return [normalise_input(r["locality"]) in asked
            or any(truth and r["locality_target"].strip().casefold() == truth and names(r["locality"], name)
                   for name, truth in edited)
            for r in records]


def model_path(name: str) -> str:
    """A benchmark model by name: the tiny Llama shipped in sample_models, or a real one via models.py."""
    if name == "stories260K":
        return str(LLAMA)
    import models
    return str(models.fetch(name))


def environment(device: str) -> dict:
    import torch

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--", "melo_cli", "benchmarks/*.py"], cwd=ROOT,
                                    capture_output=True, text=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = "unknown", False
    gpu = torch.cuda.get_device_name(0) if device.startswith("cuda") and torch.cuda.is_available() else None
    return {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores" + (f", {gpu}" if gpu else ""),
            "python": platform.python_version(), "torch": torch.__version__,
            "commit": commit + ("+dirty" if dirty else ""), "device": device,
            "command": "python " + " ".join([os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:])}


def table(headers: list[str], rows: list[list]) -> str:
    def cell(v):
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.3f}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write(name: str, tag: str, env: dict, results: dict, markdown: str, out_dir: Path = RESULTS) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{name}-{tag}"
    (out_dir / f"{stem}.json").write_text(json.dumps({"environment": env, **results}, indent=2) + "\n")
    header = (f"_{env['date']} · {env['machine']} · torch {env['torch']} · device {env['device']} · "
              f"commit {env['commit']}_\n\n`{env['command']}`\n\n")
    (out_dir / f"{stem}.md").write_text(header + markdown + "\n")
    print(header + markdown, file=sys.stderr)
    return out_dir / f"{stem}.json"
