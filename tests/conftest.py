"""Shared fixtures: real small models loaded through from_pretrained, never from the network."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LLAMA = ROOT / "sample_models" / "stories260K"
SAMPLES = ROOT / "sample_edits"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def shared_dir() -> Path:
    return Path(os.environ.get("MELO_SHARED") or ROOT.parent / "shared")


@pytest.fixture(scope="session")
def shared() -> Path:
    path = shared_dir()
    if not (path / "models").is_dir():
        pytest.skip(f"the shared folder {path} is absent (set MELO_SHARED)")
    return path


@pytest.fixture(scope="session", autouse=True)
def _quiet_transformers():
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


@pytest.fixture(scope="session")
def llama_path() -> Path:
    return LLAMA


@pytest.fixture(scope="session")
def gpt2_path(shared, tmp_path_factory) -> Path:
    """A tiny random GPT-2 (4 blocks, Conv1D layers) with the real GPT-2 tokenizer, saved and reloadable."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    path = tmp_path_factory.mktemp("gpt2-tiny")
    tokenizer = GPT2TokenizerFast.from_pretrained(shared / "models" / "gpt2-tokenizer")
    torch.manual_seed(0)
    config = GPT2Config(n_layer=4, n_embd=64, n_head=4, n_positions=256, vocab_size=tokenizer.vocab_size,
                        bos_token_id=50256, eos_token_id=50256)
    GPT2LMHeadModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def load_edits(name: str, n: int | None = None) -> list[dict]:
    import json
    lines = (SAMPLES / name).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines[:n]]


def fit_classifier_head(source, destination, train_file, labels, steps=150, lr=1e-2, seed=0):
    """The README's recipe (sample_models/make_classifier.py): fit a classifier head, save the model."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_classifier", ROOT / "sample_models" / "make_classifier.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.fit_classifier_head(source, destination, train_file, labels, steps, lr, seed)


CLASS_LABELS = ["place", "person", "time", "other"]


@pytest.fixture(scope="session")
def t5_paths(tmp_path_factory) -> dict[str, Path]:
    """Tiny random T5s (4 blocks; plain and gated feed-forward) with ByT5's file-free tokenizer."""
    import torch
    from transformers import ByT5Tokenizer, T5Config, T5ForConditionalGeneration

    paths = {}
    for ff in ("relu", "gated-gelu"):
        path = tmp_path_factory.mktemp(f"t5-{ff}")
        torch.manual_seed(0)
        config = T5Config(vocab_size=384, d_model=64, d_ff=128, num_layers=4, num_heads=4, d_kv=16,
                          decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, feed_forward_proj=ff)
        T5ForConditionalGeneration(config).save_pretrained(path)
        ByT5Tokenizer().save_pretrained(path)
        paths[ff] = path
    return paths


@pytest.fixture(scope="session")
def bert_path(tmp_path_factory) -> Path:
    """A tiny random BERT classifier with a WordPiece vocabulary made from the sample files.

    initializer_range 0.3 rather than BERT's 0.02: with 0.02 the random head's logits span about
    +-0.2 behind a tanh pooler, so no change of the hidden state can move one input to another
    label while its batch-mates stay; a wider init stands in for the trained head a user edits.
    """
    import json
    import re

    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    path = tmp_path_factory.mktemp("bert-tiny")
    words = set()
    for file in sorted(f for pattern in ("classification-*.jsonl", "counterfact-*.jsonl", "zsre-*.jsonl")
                       for f in SAMPLES.glob(pattern)):  # a fixed set: a new sample file must not change this model
        for line in file.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            for text in [record["input"], *record.get("rephrases", [])]:
                words.update(re.findall(r"\w+|[^\w\s]", text.lower()))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(words)]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast.from_pretrained(path)  # not BertTokenizerFast(vocab_file=...): empty in 5.x
    tokenizer.save_pretrained(path)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                        intermediate_size=128, num_labels=4, initializer_range=0.3,
                        id2label=dict(enumerate(CLASS_LABELS)), label2id={l: i for i, l in enumerate(CLASS_LABELS)})
    BertForSequenceClassification(config).save_pretrained(path)
    return path
