"""Where a base model's layers sit: one device (`--device`), or accelerate's big-model placement
(`--device-map auto`, bounded by `--max-memory`), which spreads the layers over GPUs, the CPU and disk
for a base that does not fit one device.

With a device map the model's module tree stays as transformers built it (melo's LoRA runs as a hook on
each layer, melo_cli/model/lora.py), since accelerate's offloading hooks are keyed by the tree's names; an
offloaded layer's weights wait on the meta device until its block runs, so what must know where a
layer computes asks `execution_device`, and the fingerprint reads offloaded weights through the hooks
(`weights`).
"""

from __future__ import annotations

import atexit
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Iterator

import torch

from melo_cli.errors import InputError

DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")
_SIZE = re.compile(r"^\d+(\.\d+)?\s*([KMGT]i?B|B)?$", re.IGNORECASE)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, ValueError):
        raise InputError(f"`device` {device!r}: expected auto, cpu, cuda or cuda:N") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"`device` {device}: CUDA is not available on this machine")
    if chosen.type == "cuda" and chosen.index is not None and chosen.index >= torch.cuda.device_count():
        raise InputError(f"`device` {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return chosen


def parse_max_memory(text: str | dict | None) -> dict | None:
    """`--max-memory` as accelerate takes it: "0=20GiB,cpu=8GiB" -> {0: "20GiB", "cpu": "8GiB"}."""
    if text is None or isinstance(text, dict):
        return text
    out: dict = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        device, _, size = part.partition("=")
        device, size = device.strip(), size.strip()
        if not _SIZE.match(size) or not (device.isdigit() or device in ("cpu", "mps")):
            raise InputError(f"`max_memory` {text!r}: expected DEVICE=SIZE pairs, DEVICE a GPU number, cpu or mps "
                             f"and SIZE like 20GiB or 300MB")
        out[int(device) if device.isdigit() else device] = size.replace(" ", "")
    if not out:
        raise InputError(f"`max_memory` {text!r}: expected DEVICE=SIZE pairs")
    return out


@dataclass(frozen=True)
class Placement:
    """Where to load a base, checked on creation (before anything loads)."""

    device: str = "auto"
    device_map: str | None = None
    """auto, balanced, balanced_low_0 or sequential (accelerate's), or None: the whole model on `device`."""
    max_memory: dict | None = field(default=None, hash=False)

    def __post_init__(self) -> None:
        if self.device_map is not None and self.device_map not in DEVICE_MAPS:
            raise InputError(f"`device_map` {self.device_map!r}: choose one of {', '.join(DEVICE_MAPS)}")
        if self.device_map is not None and self.device != "auto":
            raise InputError("give `device` or `device_map`, not both")
        if self.max_memory is not None and self.device_map is None:
            raise InputError("`max_memory` goes with `device_map`")
        if self.device_map is None:
            resolve_device(self.device)  # refused before anything loads

    def load_kwargs(self) -> dict:
        """The from_pretrained keywords for this placement."""
        if self.device_map is None:
            return {}
        try:
            import accelerate  # noqa: F401
        except ImportError:
            raise InputError("`device_map` needs accelerate: pip install accelerate") from None
        return {"device_map": self.device_map, "max_memory": self.max_memory, "offload_folder": _offload_folder()}


_FOLDERS: list[str] = []


def _offload_folder() -> str:
    """A private folder for the layers accelerate offloads to disk, removed when the process ends."""
    if not _FOLDERS:
        _FOLDERS.append(tempfile.mkdtemp(prefix="melo-offload-"))
        atexit.register(shutil.rmtree, _FOLDERS[0], True)
    return _FOLDERS[0]


def execution_device(modules: dict, name: str) -> torch.device:
    """Where module `name` computes: its weight's device, or, for a layer accelerate offloaded (its weight on
    the meta device), the execution device of the nearest module above it that accelerate hooked."""
    weight = getattr(modules[name], "weight", None)
    if weight is not None and weight.device.type != "meta":
        return weight.device
    parts = name.split(".")
    for cut in range(len(parts), -1, -1):
        hook = getattr(modules.get(".".join(parts[:cut])), "_hf_hook", None)
        device = getattr(hook, "execution_device", None)
        if device is not None:
            return torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
    return torch.device("cpu")


def input_device(model) -> torch.device:
    """Where a model's inputs go: the execution device of its input embeddings."""
    embeddings = model.get_input_embeddings()
    modules = dict(model.named_modules())
    name = next(n for n, m in modules.items() if m is embeddings)
    return execution_device(modules, name)


def weights(model) -> Iterator[tuple[str, torch.Tensor]]:
    """Every weight of the model by name, an offloaded one read through the accelerate hook that holds it."""
    modules = dict(model.named_modules())
    for name, tensor in model.state_dict().items():
        yield name, tensor if tensor.device.type != "meta" else _offloaded(modules, name)


def module_weight(model, module) -> torch.Tensor:
    """A module's weight, read through accelerate's hook when it is offloaded."""
    if module.weight.device.type != "meta":
        return module.weight
    modules = dict(model.named_modules())
    name = next(n for n, m in modules.items() if m is module)
    return _offloaded(modules, f"{name}.weight")


def _offloaded(modules: dict, name: str) -> torch.Tensor:
    parts = name.split(".")
    for cut in range(len(parts) - 1, -1, -1):
        hook = getattr(modules.get(".".join(parts[:cut])), "_hf_hook", None)
        stored = getattr(hook, "weights_map", None)
        key = ".".join(parts[cut:])
        if stored is not None and key in stored:
            return torch.as_tensor(stored[key])
    raise RuntimeError(f"weight {name} is offloaded where melo cannot read it")
