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
