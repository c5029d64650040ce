"""The format on disk, torch-free: its file names (layout), writing (store), publishing atomically
(publish) over what may be replaced (target), reading a bundle whole while writers swap it (read,
snapshot), the manifest (manifest), validation of everything read (validate, hnsw_file) and the
writers' lock (locks). `melo inspect`, `forget` and `export` use only
this package: they never load a model. Imports no torch, model/, training/ or tasks/."""

from melo_cli.bundle.layout import CARD, CLUSTERS, EDITS, HISTORY, INDEX, LORA, MANIFEST
from melo_cli.bundle.publish import clean_stale, publish, replacing, temp_dir_for
from melo_cli.bundle.read import Bundle, load, read_manifest
from melo_cli.bundle.store import sha256, write, write_bytes, write_files, write_text
from melo_cli.bundle.target import check_replaceable, output_for

__all__ = ["Bundle", "CARD", "CLUSTERS", "EDITS", "HISTORY", "INDEX", "LORA", "MANIFEST", "check_replaceable",
           "clean_stale", "load", "output_for", "publish", "read_manifest", "replacing", "sha256", "temp_dir_for",
           "write", "write_bytes", "write_files", "write_text"]
