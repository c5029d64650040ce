"""What a command does beyond one call of the Python API: the edit journey with its lock (edit), opening a
bundle and its base (open), taking edits back (forget) and exporting adapters (export)."""
