"""The retention curves of a bundle's history, drawn with matplotlib (the optional 'plot' extra).

Imported only when `--plot` is asked for, so melo itself does not need matplotlib.
"""

from __future__ import annotations

from pathlib import Path

from .errors import InputError


def plot_history(rows: list[dict], path: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError("--plot needs matplotlib: pip install 'melo-cli[plot]'") from None
    edits = [row["edits"] for row in rows]
    figure, axis = plt.subplots(figsize=(6, 3.5), dpi=120)
    for key, label in (("edit_success", "edit success (current batch)"), ("retention", "retention (earlier edits)"),
                       ("locality", "locality")):
        points = [(x, row[key]) for x, row in zip(edits, rows) if row.get(key) is not None]
        if points:
            axis.plot(*zip(*points), marker="o", markersize=3, label=label)
    axis.set_xlabel("edits applied")
    axis.set_ylim(-0.02, 1.02)
    axis.grid(alpha=0.3)
    axis.legend(loc="lower left", fontsize=8)
    axis.set_title("melo: retention over sequential edits")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
