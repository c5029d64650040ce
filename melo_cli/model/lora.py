"""BlockLoRA: one LoRA module per layer whose ranks are split into blocks, one block per edit batch.

The ranks of the module are a pool of blocks of `rank_per_block` ranks each; block k is
A_k (r x in) and B_k (out x r). A row routed to block k gets W x + scale * B_k A_k x; a row routed
to no block gets exactly W x (its output is not touched at all). This is the MELO paper's
neuron-indexed mask over one large rank, computed by gathering the active block rather than by
multiplying with a 0/1 mask, so the cost per row does not grow with the number of blocks.

Frozen blocks live in buffers (never in an optimizer). The blocks being trained (one per edit, or
one per batch) are parameters kept apart until `commit_block` copies them into the pool, so earlier
blocks stay bit-identical by construction.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from melo_cli.config import lora_scale
from melo_cli.model.route_scope import Routes


def linear_dims(module: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of an nn.Linear or a GPT-2 style Conv1D (weight is in x out)."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if type(module).__name__ == "Conv1D":
        fan_in, fan_out = module.weight.shape
        return int(fan_in), int(fan_out)
    raise TypeError(f"cannot put LoRA on {type(module).__name__}: only Linear and Conv1D layers")


def is_lora_target(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


class BlockLoRA(nn.Module):
    """The LoRA blocks of one Linear/Conv1D layer: adds the block chosen for each row by `routes` to the
    layer's output (`add_to`, run as a forward hook on the layer; `forward` for the layer alone)."""

    def __init__(self, base: nn.Module, routes: Routes, rank_per_block: int, alpha: float | None = None,
                 grid: torch.dtype = torch.float32, device: torch.device | None = None):
        super().__init__()
        self.base = base
        self.routes = routes
        self.in_features, self.out_features = linear_dims(base)
        self.rank = rank_per_block
        self.scale = lora_scale(rank_per_block, alpha)
        self.grid = grid
        """The dtype blocks are stored in: trained weights stay on its grid (`snap`), held in float32."""
        device = device or base.weight.device  # LoRA is kept in float32 whatever the base dtype: it is tiny
        self.register_buffer("lora_A", torch.zeros(0, rank_per_block, self.in_features, device=device))
        self.register_buffer("lora_B", torch.zeros(0, self.out_features, rank_per_block, device=device))
        self.train_A: nn.Parameter | None = None
        self.train_B: nn.Parameter | None = None
        self.train_block: int | None = None

    @property
    def weight(self) -> torch.Tensor:
        """The base layer's weight: model code reads it (T5 checks `wo.weight.dtype`)."""
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return getattr(self.base, "bias", None)

    @property
    def n_blocks(self) -> int:
        return int(self.lora_A.shape[0])

    def ensure_blocks(self, n: int) -> None:
        """Grow the pool to hold at least n blocks (new blocks are zero: no effect until trained).

        The blocks are a view of the first rows of a larger store that grows by a quarter when full, so a
        batch's new blocks cost their own rows, not a copy of every block so far (a copy per batch was
        0.17 s at 10,000 blocks on SmolLM2, 5% of a batch, and grew with every edit)."""
        if n <= self.n_blocks:
            return
        self.lora_A, self._store_A = _grown(self.lora_A, getattr(self, "_store_A", None), n)
        self.lora_B, self._store_B = _grown(self.lora_B, getattr(self, "_store_B", None), n)

    def start_block(self, block: int, generator: torch.Generator | None = None) -> list[nn.Parameter]:
        """Open block `block` for training (see start_blocks)."""
        return self.start_blocks(block, 1, generator)

    def start_blocks(self, first: int, count: int, generator: torch.Generator | None = None) -> list[nn.Parameter]:
        """Open blocks first..first+count-1 for training, each A random (kaiming) and B zero (a no-op).

        They are trained together (each row of a batch uses its own block) and stay apart from the
        pool until `commit_block`.
        """
        self.ensure_blocks(first + count)
        a = torch.empty(count, self.rank, self.in_features, dtype=torch.float32)
        bound = 1.0 / math.sqrt(self.in_features)
        a.uniform_(-bound, bound, generator=generator)
        self.train_A = nn.Parameter(a.to(self.grid).to(self.lora_A.device, self.lora_A.dtype))
        self.train_B = nn.Parameter(torch.zeros(count, *self.lora_B.shape[1:], device=self.lora_B.device,
                                                dtype=self.lora_B.dtype))
        self.train_block = first
        return [self.train_A, self.train_B]

    @torch.no_grad()
    def snap(self) -> None:
        """Round the blocks being trained to the storage grid (after each optimizer step), so that what is
        scored while training is exactly what the bundle stores."""
        if self.train_block is not None and self.grid != torch.float32:
            for p in (self.train_A, self.train_B):
                p.copy_(p.to(self.grid).to(p.dtype))

    @torch.no_grad()
    def commit_block(self) -> None:
        """Copy the trained blocks into the pool and freeze them."""
        if self.train_block is None:
            return
        first, count = self.train_block, self.train_A.shape[0]
        self.lora_A[first:first + count] = self.train_A.detach()
        self.lora_B[first:first + count] = self.train_B.detach()
        self.train_A = self.train_B = None
        self.train_block = None

    def _weights_for(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A (n, r, in) and B (n, out, r) for the given block ids (all >= 0)."""
        a, b = self.lora_A[ids], self.lora_B[ids]
        if self.train_block is not None:
            offset = ids - self.train_block
            training = (offset >= 0).view(-1, 1, 1)
            index = offset.clamp(min=0, max=self.train_A.shape[0] - 1)
            a = torch.where(training, self.train_A[index], a)
            b = torch.where(training, self.train_B[index], b)
        return a, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The base layer's output with the routed rows' blocks added."""
        return self.add_to(x, self.base(x))

    def add_to(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """`out` (the base layer's output for input x) with each routed row's block added; as a forward hook
        on the base layer this leaves the model's module tree as it is (what accelerate's offloading
        hooks, keyed by the tree's names, need)."""
        scope = self.routes.active()
        if scope is None:
            return out
        if scope.block_ids.shape[0] != x.shape[0]:
            raise RuntimeError(f"route has {scope.block_ids.shape[0]} rows but the layer input has {x.shape[0]}")
        rows, ids = scope.routed_rows()
        if rows.numel() == 0:
            return out
        if self.train_block is None:  # frozen weights: gather once per call, reuse at every decoding step
            key = ("weights", id(self))
            if key not in scope.cache:
                scope.cache[key] = self._weights_for(ids)
            a, b = scope.cache[key]
        else:
            a, b = self._weights_for(ids)
        xr = x[rows].to(a.dtype)
        squeeze = xr.dim() == 2
        if squeeze:
            xr = xr.unsqueeze(1)
        delta = torch.bmm(torch.bmm(xr, a.transpose(1, 2)), b.transpose(1, 2)) * self.scale
        if squeeze:
            delta = delta.squeeze(1)
        return out.index_add(0, rows, delta.to(out.dtype))


def _grown(blocks: torch.Tensor, store: torch.Tensor | None, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(the first n rows of a store holding `blocks` then zeros, that store). The store is reused while
    `blocks` is still its view and it has room; otherwise a new one a quarter larger (at least n): the
    copies stay a constant share per block, and the spare rows at most a quarter of the pool."""
    held = blocks.shape[0]
    if store is None or n > store.shape[0] or store.device != blocks.device or store.dtype != blocks.dtype \
            or held and blocks.data_ptr() != store.data_ptr():
        store = blocks.new_zeros(max(n, held + held // 4, 16), *blocks.shape[1:])
        store[:held] = blocks
    else:
        store[held:n].zero_()  # rows a shorter view once exposed may hold old blocks
    return store[:n], store
