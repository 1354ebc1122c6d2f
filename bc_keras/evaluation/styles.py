"""Curve styles and legend placement for the multi-curve figures: no two curves of a panel
look alike, and no legend covers a curve."""

from __future__ import annotations

import textwrap

import matplotlib

# The qualitative tab10 colours, then the same colours with other line styles, so that no two
# curves of a panel share colour and line style (and they stay apart printed in grey).
PALETTE = tuple(matplotlib.colors.to_hex(colour) for colour in matplotlib.colormaps["tab10"].colors)
LINE_STYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D", "v", "P", "X")
MAX_STYLES = len(PALETTE) * len(LINE_STYLES)
# Reference lines (chance, perfect calibration): black and dotted, unlike any curve.
REFERENCE = {"color": "black", "linestyle": ":", "linewidth": 1.0}
LEGEND_WRAP = 40  # characters per legend line: long model names wrap instead of widening it


def distinct_styles(count: int) -> list[tuple[str, str, str]]:
    """`count` pairwise distinct `(colour, linestyle, marker)` styles, tab10 colours first.

    Raises:
        ValueError: if `count` is negative or more than MAX_STYLES (40).
    """
    if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= MAX_STYLES:
        raise ValueError(
            f"One panel draws at most {MAX_STYLES} distinct curves; split them over panels. "
            f"Received: count={count!r}"
        )
    return [
        (
            PALETTE[index % len(PALETTE)],
            LINE_STYLES[index // len(PALETTE)],
            MARKERS[index % len(MARKERS)],
        )
        for index in range(count)
    ]


def styled_plot(axis, style, x, y, **options):
    """`axis.plot` of one curve in one of `distinct_styles`; returns its lines."""
    colour, linestyle, marker = style
    return axis.plot(x, y, color=colour, linestyle=linestyle, marker=marker, markersize=4,
                     **options)  # fmt: skip


def outside_legend(axis) -> None:
    """The axis' legend right of its plot area, labels wrapped, so it never hides a curve
    (save with `bbox_inches="tight"` to keep it in the image)."""
    handles, labels = axis.get_legend_handles_labels()
    if handles:
        axis.legend(
            handles,
            [textwrap.fill(label, LEGEND_WRAP, break_on_hyphens=False) for label in labels],
            loc="upper left",
            bbox_to_anchor=(1.02, 1.0),
            borderaxespad=0.0,
            fontsize=8,
        )
