"""Small plotting helpers, so that a chapter's figure cell shows what is plotted, not how.

* :func:`log_log` draws measured series (seconds, bytes, ...) against a swept size on log-log axes,
  with a tick at every measured size: the benchmark figures of chapters 3, 4 and 7.
* :func:`legend_below` puts one legend under a figure's panels.
"""

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter


def log_log(ax: Axes, series: dict[str, tuple[list[float], list[float]]], xlabel: str,
            ylabel: str | None = None, title: str | None = None, base: int = 10,
            colors: dict[str, str] | None = None, legend: bool = True) -> Axes:
    """Plot ``series`` (label -> (xs, ys)) as lines with markers on log-log axes and return ``ax``.

    The x ticks are the measured sizes, written out (no ``10^k`` labels); the legend names the series
    (``legend=False``: none, e.g. for one legend under several panels, :func:`legend_below`);
    ``colors`` (label -> colour) keeps a series the same colour across panels.
    """
    for label, (xs, ys) in series.items():
        ax.plot(xs, ys, "o-", label=label, color=(colors or {}).get(label))
    ax.set_xscale("log", base=base)
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    if ylabel is not None:
        ax.set_ylabel(ylabel)
    if title is not None:
        ax.set_title(title)
    ticks = sorted({x for xs, _ in series.values() for x in xs})
    ax.set_xticks(ticks, [f"{x:g}" for x in ticks])
    ax.xaxis.set_minor_formatter(NullFormatter())
    if legend:
        ax.legend(fontsize=9)
    return ax


def legend_below(fig: Figure, ax: Axes, ncol: int = 3) -> None:
    """One legend for all panels, under them, naming the series drawn in ``ax`` (so it covers no line)."""
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=9, frameon=False)
