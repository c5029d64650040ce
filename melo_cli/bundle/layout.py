"""The names of a bundle's files: one place, for the writer, the reader and the publisher."""

MANIFEST = "manifest.yaml"
LORA = "lora.safetensors"
INDEX = "router.hnsw"
CLUSTERS = "clusters.safetensors"
EDITS = "edits.jsonl"
CARD = "README.md"
HISTORY = "history.jsonl"
FILES = (MANIFEST, LORA, INDEX, CLUSTERS, EDITS, CARD, HISTORY)
