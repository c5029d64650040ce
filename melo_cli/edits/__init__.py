"""Edit and holdout records: the records themselves (records), one from parsed JSON (parsing), reading
them from files (reading), and sorting a file's edits against each other and a bundle's (triage)."""

from melo_cli.edits.parsing import check_unicode, parse_edit, parse_holdout
from melo_cli.edits.reading import ReadReport, read_edits, read_holdout
from melo_cli.edits.records import Edit, Holdout, auto_id, batches, normalise_input, same_edit

__all__ = ["Edit", "Holdout", "ReadReport", "auto_id", "batches", "check_unicode", "normalise_input", "parse_edit",
           "parse_holdout", "read_edits", "read_holdout", "same_edit"]
