"""The retention curves of a bundle's history, drawn with matplotlib (the optional 'plot' extra).

Imported only when `--plot` is asked for, so melo itself does not need matplotlib.
"""

from __future__ import annotations

from pathlib import Path

from melo_cli.errors import InputError


def check_available() -> None:
    """Fail before any work when --plot cannot be honoured."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise InputError("--plot needs matplotlib: pip install 'melo-cli[plot]'")


def plot_history(rows: list[dict], path: Path) -> None:
    """Edit success, retention and locality against the number of edits applied.

    The lines often coincide at 1.0, so each has its own style and marker and the later ones are
    drawn thinner on top: every line stays visible.
    """
    check_available()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    edits = [row["edits"] for row in rows]
    figure, axis = plt.subplots(figsize=(6.4, 3.8), dpi=120)
    styles = (("edit_success", "edit success (current batch)", "-", "o", 5.0, 9),
              ("retention", "retention (earlier edits)", "--", "s", 3.0, 6),
              ("locality", "locality (holdout unchanged)", ":", "^", 1.8, 4))
    for key, label, line, marker, width, size in styles:
        points = [(x, row[key]) for x, row in zip(edits, rows) if row.get(key) is not None]
        if points:
            axis.plot(*zip(*points), linestyle=line, marker=marker, linewidth=width, markersize=size, label=label,
                      alpha=0.85)
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_xlabel("edits applied")
    axis.set_ylabel("share of inputs")
    axis.set_ylim(-0.04, 1.06)
    axis.grid(alpha=0.3)
    axis.legend(loc="lower left", fontsize=8)
    axis.set_title("melo: retention over sequential edits (teacher-forced)")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
