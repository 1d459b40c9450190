"""Charts as SVG text, for reports that are one file: matplotlib without a display."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

__all__ = ["svg_chart"]


def svg_chart(draw: Callable[[Any], None], size: tuple[float, float]) -> str:
    """The SVG of one figure of `size` inches whose axes `draw` fills."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=size)
    try:
        draw(axes)
        figure.tight_layout()
        out = io.StringIO()
        figure.savefig(out, format="svg")
        return out.getvalue()
    finally:
        plt.close(figure)
