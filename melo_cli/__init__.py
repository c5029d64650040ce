"""melo: lifelong model editing with neuron-indexed dynamic LoRA (MELO) from the command line."""

__version__ = "0.1.0"
