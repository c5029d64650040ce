"""Loading a Hugging Face model for one of melo's tasks, and finding where LoRA and the key go.

Layers are chosen from the module structure, not from checkpoint names: a model's transformer
blocks are its numbered ModuleLists; LoRA goes on the feed-forward Linear/Conv1D layers (those
outside any attention submodule) of the top blocks; the key is the output of the block just below
the lowest LoRA block, so keys never depend on edits.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from melo_cli.model import placement
from melo_cli.model import threads
from melo_cli.errors import InputError
from melo_cli.tasks import TASKS, Task
from melo_cli.model.placement import Placement, resolve_device  # noqa: F401  (resolve_device: callers name it here)

log = logging.getLogger("melo")

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class Backbone:
    """A loaded base model with its tokenizer and task."""

    model: nn.Module
    tokenizer: object
    task: str
    """The task's name (what configs and manifests record)."""
    source: str
    device: torch.device
    gguf: dict | None = None
    """For a GGUF base: the file's name, sha256 and size (the weights came from it, dequantised)."""
    shadowed: object = None
    """Which tokens can never be the argmax (producible.shadowed), computed on first need."""
    glue: object = None
    """Which tokens continue a word (handoff.glue_tokens), computed on first need."""

    @property
    def kind(self) -> Task:
        """The resolved Task object for `task` (tasks/): what encodes inputs and scores outputs."""
        return TASKS[self.task]

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id)


def detect_task(config) -> str:
    """The task a config's architecture was built for (melo_cli/tasks: each task names its own)."""
    if getattr(config, "is_encoder_decoder", False):
        return "seq2seq"
    for arch in getattr(config, "architectures", None) or []:
        for task in TASKS.values():
            if arch.endswith(task.architecture_suffixes):
                return task.name
    if getattr(config, "is_decoder", False):
        return "causal-lm"
    for task in TASKS.values():
        if config.model_type in task.model_types:
            return task.name
    raise InputError(f"cannot tell the task of model type {config.model_type!r}; pass `task`")


def task_for(config, task: str) -> str:
    """The task to load a model for: detected, or the one asked for if this architecture supports it."""
    if task == "auto":
        return detect_task(config)
    if task not in TASKS:
        raise InputError(f"`task` {task!r}: choose one of auto, {', '.join(TASKS)}")
    from transformers.models.auto import modeling_auto as auto

    supported = getattr(auto, TASKS[task].mapping)
    if config.model_type not in supported and not getattr(config, "auto_map", None):
        raise InputError(f"`task` {task}: a {config.model_type!r} model has no {task} form in transformers "
                         f"(it was made for {detect_task(config)})")
    return task


def quiet_transformers() -> None:
    """transformers' own logging and progress bars off unless melo logs at debug level (-v)."""
    from transformers.utils import logging as hf_logging

    if log.isEnabledFor(logging.DEBUG):
        hf_logging.set_verbosity_info()
    else:
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        logging.getLogger("accelerate").setLevel(logging.ERROR)  # "parameters offloaded to the disk" (--device-map)


def looks_local(source: str) -> bool:
    """Whether a model name means a path on this machine rather than a hub id.

    `./x`, `../x`, `/x`, `~/x`, anything that exists, and `a/b` whose `a` exists here: such a name
    is never sent to the model hub, where a typo would cost retries and a misleading error.
    """
    if source.startswith(("./", "../", "/", "~", ".\\", "..\\")) or source in (".", ".."):
        return True
    path = Path(source)
    return path.exists() or (path.parent != Path(".") and path.parent.exists())


def check_source(source: str) -> None:
    """Refuse an empty name, and a local-looking model path that is not there, before anything asks the hub."""
    if not source.strip():
        raise InputError("the model name is empty: give a folder, a hub id or a .gguf file")
    if looks_local(source) and not Path(source).expanduser().exists():
        raise InputError(f"{source}: no such model folder or file")


def readable_source(source: str, trust_remote_code: bool = False) -> tuple[str, dict | None]:
    """(what from_pretrained reads, the GGUF record or None): a GGUF file reads as its converted folder."""
    from melo_cli.model import gguf

    check_source(source)
    quiet_transformers()
    found = gguf.find(source)
    if found is None:
        return source, None
    info = gguf.inspect_file(found)
    return str(gguf.converted(info, trust_remote_code)), info.record()


def load_config(source: str, trust_remote_code: bool = False):
    """The model's config alone (no weights): enough to detect the task and check labels."""
    from transformers import AutoConfig

    source, _ = readable_source(source, trust_remote_code)
    try:
        return AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot load model {source!r}: {str(exc).splitlines()[0]}") from None


def skeleton(config, task: str) -> nn.Module | None:
    """The model's module tree built from its config on the meta device (no weights, no memory), for
    checking layer names before the weights load; None where the config cannot be built that way."""
    import transformers

    try:
        with torch.device("meta"):
            return getattr(transformers, TASKS[task_for(config, task)].auto_model).from_config(config)
    except Exception:  # remote code, an unusual config: the check after loading still holds
        return None


def _check_weights_format(source: str) -> None:
    """A local folder must hold safetensors weights: pickled ones (pytorch_model.bin) can run code."""
    folder = Path(source)
    if folder.is_dir() and not any(folder.glob("*.safetensors")) and any(folder.glob("*.bin")):
        raise InputError(f"{source}: holds pickled weights (*.bin) only; melo loads safetensors weights, which "
                         f"cannot run code (convert with transformers: model.save_pretrained(dir))")


def load(source: str, task: str = "auto", device: str = "auto", dtype: str = "auto",
         trust_remote_code: bool = False, device_map: str | None = None, max_memory: dict | str | None = None
         ) -> Backbone:
    """Load model and tokenizer with from_pretrained (a local folder or a hub id) for `task`, on one
    device or spread by accelerate (`device_map`, melo_cli/model/placement.py)."""
    import transformers

    given = source
    where = Placement(device, device_map, placement.parse_max_memory(max_memory))  # refused before loading
    source, gguf_record = readable_source(source, trust_remote_code)  # also quiets transformers
    _check_weights_format(source)
    config = load_config(source, trust_remote_code)
    task = task_for(config, task)
    auto = getattr(transformers, TASKS[task].auto_model)
    kwargs = {"trust_remote_code": trust_remote_code, **where.load_kwargs()}
    if dtype != "auto":
        if dtype not in DTYPES:
            raise InputError(f"unknown `dtype` {dtype!r}; choose one of auto, {', '.join(DTYPES)}")
        kwargs["dtype"] = DTYPES[dtype]
    try:
        model = auto.from_pretrained(source, **kwargs)
    except OSError as exc:  # a folder with a config and no weights, a hub id without them
        raise InputError(f"cannot load the weights of {given!r}: {str(exc).splitlines()[0]}") from None
    threads.configure(model)
    tokenizer = load_tokenizer(source, trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if device_map is None:
        model.to(resolve_device(device))
    model.eval()
    model.requires_grad_(False)
    return Backbone(model, tokenizer, task, given, placement.input_device(model), gguf_record)


def load_tokenizer(source: str, trust_remote_code: bool = False):
    """The model's own tokenizer, from the same folder or hub id."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError) as exc:
        raise InputError(f"cannot load the tokenizer of {source!r}: {str(exc).splitlines()[0]}") from None


# -- what identifies a checkpoint --------------------------------------------------------------
SKETCH_DIM, SKETCH_SAMPLES = 4, 4096
SKETCH_TOLERANCE = 0.02
"""Two sketches agree when, for every weight, each coordinate differs by less than this share of that
weight's sample norm. Loading a checkpoint as bfloat16 moves each value by up to 2^-8 of itself, which
moves a coordinate by about 0.0023 of the norm (a sum of random rounding errors); another checkpoint,
or one weight changed by a few percent of its tensor's norm, moves it by far more than 0.02."""


def fingerprint(model: nn.Module) -> dict:
    """What identifies a checkpoint whatever dtype it was loaded in: {"structure", "weights"}.

    structure: sha256 over the config (less load-time fields) and every weight's name and shape.
    weights: per weight, the norm of a strided sample of 4096 values and 4 random +-1 projections of
    it, as base64 float32, compared with a tolerance (`same_model`): a hash of rounded values cannot
    be dtype-invariant, since float16 and bfloat16 round the same weight to different neighbours.
    Sampling keeps this to a fraction of a second for large models.
    """
    import base64

    import numpy as np

    digest = hashlib.sha256()
    config = model.config.to_dict()
    for volatile in ("transformers_version", "_name_or_path", "pad_token_id", "dtype", "torch_dtype",
                     "architectures", "_commit_hash", "use_cache", "quantization_config"):
        config.pop(volatile, None)
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    signs = np.random.default_rng(0).choice([-1.0, 1.0], size=(SKETCH_DIM, SKETCH_SAMPLES))
    rows = []
    for name, tensor in sorted(placement.weights(model), key=lambda item: item[0]):
        digest.update(f"{name}:{tuple(tensor.shape)}".encode())
        flat = tensor.detach().reshape(-1)
        step = max(1, flat.numel() // SKETCH_SAMPLES)
        sample = flat[::step][:SKETCH_SAMPLES].to("cpu", torch.float64).numpy()
        sample = np.nan_to_num(sample, nan=0.0, posinf=0.0, neginf=0.0)
        rows.append([np.sqrt(sample @ sample), *(signs[:, :len(sample)] @ sample)])
    sketch = np.asarray(rows, np.float32).reshape(-1, 1 + SKETCH_DIM)
    return {"structure": digest.hexdigest(), "weights": base64.b64encode(sketch.tobytes()).decode("ascii")}


def same_model(expected: dict | None, actual: dict) -> bool:
    """Whether a recorded fingerprint and a loaded model's agree (structure exactly, weights to tolerance)."""
    import base64
    import binascii

    import numpy as np

    if not isinstance(expected, dict) or expected.get("structure") != actual["structure"]:
        return False
    try:
        recorded = np.frombuffer(base64.b64decode(str(expected["weights"]), validate=True), np.float32)
    except (KeyError, ValueError, binascii.Error):
        return False
    now = np.frombuffer(base64.b64decode(actual["weights"]), np.float32)
    if recorded.shape != now.shape or not np.all(np.isfinite(recorded)):
        return False
    a, b = recorded.reshape(-1, 1 + SKETCH_DIM), now.reshape(-1, 1 + SKETCH_DIM)
    scale = np.maximum(np.maximum(a[:, :1], b[:, :1]), 1e-12)
    return bool(np.all(np.abs(a - b) <= SKETCH_TOLERANCE * scale))
