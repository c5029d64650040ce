"""The base model with melo inside: loading and placement (backbones, placement, gguf, threads), where LoRA
and the key go (layers), the LoRA blocks (lora) and their per-call routing (route_scope), the frozen
prefix replay (prefix), keys (keys), generation and its handoff (generation, handoff), what a model can
produce and which words are names (producible, casing), positions (lengths), and the EditedModel that
joins them (edited_model). Imports neither training/, eval/ nor bundle/."""
