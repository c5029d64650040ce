"""melo: lifelong model editing with neuron-indexed dynamic LoRA (MELO), from the command line and Python.

    from melo_cli import MeloModel, Edit
    model = MeloModel.from_pretrained("path/to/model")   # see melo_cli/api.py

The names below are imported on first use, so `melo --help` never imports torch.
"""

__version__ = "0.1.0"
__all__ = ["MeloModel", "Edit", "Holdout", "MeloConfig", "MeloError", "InputError", "BundleError", "Unlearned",
           "__version__"]

_HOMES = {"MeloModel": "api", "Edit": "edits", "Holdout": "edits", "MeloConfig": "config", "MeloError": "errors",
          "InputError": "errors", "BundleError": "errors", "Unlearned": "errors"}


def __getattr__(name: str):
    if name in _HOMES:
        import importlib
        return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    raise AttributeError(f"module 'melo_cli' has no attribute {name!r}")
