"""Small plotting helpers the reports share (matplotlib, Agg backend).

* :func:`log_axis`: a log-scaled axis with at most a few ticks at 1-2-5 values, labelled as plain
  numbers (``0.5``, ``2``, ``100``) so that tick labels neither overlap nor turn into ``10^x``;
* :func:`place_labels`: point labels placed around their points so that no two labels, and no
  label and another point's marker, overlap, and every label stays inside the axes;
* :func:`figure` / :func:`save`: a figure whose layout keeps everything (legend outside the axes
  included) inside the saved image.
"""

from __future__ import annotations

import math


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plain(value: float) -> str:
    """A tick value as a plain number: ``0.05``, ``1``, ``20``, ``1,000``."""
    if value >= 1000:
        return f"{value:,.0f}"
    text = f"{float(f'{value:.2g}'):.12f}".rstrip("0").rstrip(".")
    return text or "0"


def nice_log_ticks(lo: float, hi: float, max_ticks: int = 6) -> list[float]:
    """Between 2 and ``max_ticks`` values of the form m·10^k (m in 1, 2, 5 when they fit) within [lo, hi]."""
    lo, hi = sorted((float(lo), float(hi)))
    k0, k1 = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    ticks: list[float] = []
    for mantissas in ((1, 2, 5), (1, 3), (1,)):
        ticks = [m * 10.0 ** k for k in range(k0, k1 + 1) for m in mantissas if lo <= m * 10.0 ** k <= hi]
        if len(ticks) <= max_ticks:
            break
    if len(ticks) > max_ticks:  # many decades: every n-th decade
        step = math.ceil(len(ticks) / max_ticks)
        ticks = ticks[::step]
    if len(ticks) < 2:  # less than a decade: finer steps
        ticks = [m * 10.0 ** k for k in range(k0, k1 + 1) for m in range(1, 10) if lo <= m * 10.0 ** k <= hi]
        if len(ticks) > max_ticks:
            ticks = ticks[:: math.ceil(len(ticks) / max_ticks)]
    if len(ticks) < 2:
        ticks = sorted({float(f"{lo:.2g}"), float(f"{hi:.2g}")})
    return ticks


def log_axis(ax, which: str, values, *, pad: float = 0.12, max_ticks: int = 6) -> None:
    """Put ``ax``'s ``which`` axis ("x" or "y") on a log scale spanning ``values`` (all > 0), with
    a margin of ``pad`` of the span in log space, plain-number ticks and no minor tick labels."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    values = [float(v) for v in values if v is not None and v > 0 and math.isfinite(v)]
    lo, hi = (min(values), max(values)) if values else (1.0, 10.0)
    if hi / lo < 3:  # a narrow range: widen it around its middle
        mid = math.sqrt(lo * hi)
        lo, hi = mid / 1.8, mid * 1.8
    span = math.log10(hi / lo)
    lo, hi = lo / 10 ** (pad * span), hi * 10 ** (pad * span)
    axis = ax.xaxis if which == "x" else ax.yaxis
    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    (ax.set_xlim if which == "x" else ax.set_ylim)(lo, hi)
    axis.set_major_locator(FixedLocator(nice_log_ticks(lo, hi, max_ticks)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: plain(v)))
    axis.set_minor_locator(NullLocator())


def figure(width: float, height: float, **kw):
    """A figure with matplotlib's constrained layout (room made for titles, labels and outside legends)."""
    plt = pyplot()
    return plt.subplots(figsize=(width, height), layout="constrained", **kw)


def fit_legend(fig, handles: list, *, ncol: int, **kw):
    """``fig.legend(handles=..., **kw)`` with the most columns, at most ``ncol``, that keep the
    legend as narrow as the figure (a wide legend below narrow panels would be cut off)."""
    renderer = fig.canvas.get_renderer()
    for n in range(max(1, min(ncol, len(handles))), 0, -1):
        legend = fig.legend(handles=handles, ncol=n, **kw)
        fig.canvas.draw()
        if legend.get_window_extent(renderer).width <= 0.98 * fig.bbox.width or n == 1:
            return legend
        legend.remove()
    return None


def freeze_layout(fig) -> None:
    """Run the layout once and keep it: labels placed afterwards keep their positions when saved."""
    fig.canvas.draw()
    fig.set_layout_engine("none")


def _overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


_DIRECTIONS = [(1, 1, "left", "bottom"), (1, -1, "left", "top"), (-1, 1, "right", "bottom"), (-1, -1, "right", "top"),
               (0, 1.2, "center", "bottom"), (0, -1.2, "center", "top"), (1.2, 0, "left", "center"),
               (-1.2, 0, "right", "center")]


def place_labels(ax, points: list[tuple[float, float]], texts: list[str], *, fontsize: float = 7,
                 marker_px: float = 5.0) -> list:
    """Annotate each point with its text, choosing for each the nearest offset (8 directions, growing
    distance) where the label overlaps no earlier label, no other point's marker and stays inside
    the axes; a label moved away from its point gets a thin leader line. Call after
    :func:`freeze_layout`. Returns the annotations."""
    from matplotlib.transforms import Bbox

    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    inside = ax.get_window_extent(renderer)
    disp = [ax.transData.transform(p) for p in points]
    markers = [Bbox.from_extents(x - marker_px, y - marker_px, x + marker_px, y + marker_px) for x, y in disp]
    placed, out = [], []
    order = sorted(range(len(points)), key=lambda i: (disp[i][0], disp[i][1]))
    for i in order:
        best = None
        for radius in (4, 9, 15, 22, 30, 40):
            for dx, dy, ha, va in _DIRECTIONS:
                ann = ax.annotate(texts[i], points[i], xytext=(dx * radius, dy * radius), textcoords="offset points",
                                  ha=ha, va=va, fontsize=fontsize, zorder=4)
                ann.set_in_layout(False)
                box = ann.get_window_extent(renderer)
                clash = sum(_overlaps(box, b) for b in placed) + sum(
                    _overlaps(box, m) for j, m in enumerate(markers) if j != i)
                outside = not (box.x0 >= inside.x0 and box.x1 <= inside.x1 and box.y0 >= inside.y0 and box.y1 <= inside.y1)
                score = (outside, clash, radius)
                if best is None or score < best[0]:
                    if best is not None:
                        best[1].remove()
                    best = (score, ann, box, radius)
                else:
                    ann.remove()
                if not outside and not clash:
                    break
            if best[0][:2] == (False, 0):
                break
        _, ann, box, radius = best
        if radius > 9:  # far from its point: redraw with a leader line
            ann.remove()
            ann = ax.annotate(texts[i], points[i], xytext=ann.xyann, textcoords="offset points", ha=ann.get_ha(),
                              va=ann.get_va(), fontsize=fontsize, zorder=4,
                              arrowprops={"arrowstyle": "-", "color": "0.6", "lw": 0.5, "shrinkA": 0, "shrinkB": 3})
            ann.set_in_layout(False)
        placed.append(box)
        out.append(ann)
    return out


def save(fig, path_or_buffer, *, dpi: int = 110, format: str = "png") -> None:
    """Save ``fig`` as laid out (nothing is cropped or added) and close it."""
    plt = pyplot()
    try:
        fig.savefig(path_or_buffer, dpi=dpi, format=format)
    finally:
        plt.close(fig)
