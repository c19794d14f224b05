"""The plots of a results page, drawn on the server as inline SVG from the analysis' figures.

Axes and text are drawn in `currentColor`, so a plot takes the colour of the
page's text in the admin's dark and light themes alike. Nothing is fetched:
the page shows them without any network.
"""

import functools
import io
import logging
import math
import re
import textwrap

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from analysis.summary import Summary

logger = logging.getLogger(__name__)
INK = "#010203"  # drawn, then replaced by currentColor
BLUE, ORANGE, GREEN, GREY = "#4f9fd6", "#e6a03c", "#63b37a", "#8a939b"


def plot(function):
    """Draw with names taken as plain text (a model called "cost $5" is no TeX), and never let
    a plot that fails take the page down: it is logged and left out."""

    @functools.wraps(function)
    def draw(*args, **kwargs) -> SafeString:
        import matplotlib

        try:
            with matplotlib.rc_context({"text.parse_math": False}):
                return function(*args, **kwargs)
        except Exception:
            logger.exception("The plot %s could not be drawn", function.__name__)
            return mark_safe(
                '<p class="errornote">This plot could not be drawn; the tables above hold its figures.</p>'
            )

    return draw


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    figure.patch.set_alpha(0)
    return figure


def _style(ax) -> None:
    ax.set_facecolor("none")
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    for side in ("left", "bottom"):
        ax.spines[side].set_color(INK)
    ax.tick_params(colors=INK, labelcolor=INK)
    ax.xaxis.label.set_color(INK)
    ax.yaxis.label.set_color(INK)
    ax.title.set_color(INK)


def _svg(figure, label: str) -> SafeString:
    import matplotlib

    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": label, "font.size": 10}):
        figure.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    text = buffer.getvalue()
    text = text[text.index("<svg") :].replace(INK, "currentColor")
    text = re.sub(r"\s*<metadata>.*?</metadata>", "", text, count=1, flags=re.S)
    # Its one <style> element would break the Content-Security-Policy; results.css has the rule.
    text = re.sub(r"\s*<style[^>]*>.*?</style>", "", text, count=1, flags=re.S)
    # Scale down with the page, never up past the drawn size (points -> CSS pixels).
    size = re.search(r'<svg ([^>]*?)width="([\d.]+)pt" height="[^"]*"', text)
    if size:
        style = f'style="max-width: {float(size.group(2)) * 4 / 3:.0f}px"'
        text = text[: size.start()] + f"<svg {size.group(1)}{style}" + text[size.end() :]
    # Text, names included, was escaped by matplotlib's SVG writer; the label is escaped here.
    return mark_safe(text.replace("<svg ", f'<svg role="img" aria-label="{escape(label)}" class="plot" ', 1))


@plot
def forest_plot(summary: Summary) -> SafeString:
    """Accuracy, fool rate, detection rate and reader-averaged AUC of each model (and all pooled),
    with 95% intervals."""
    groups = ["all", *summary.models]
    names = ["All models", *summary.models]
    figure = _figure(11, 0.5 * len(groups) + 1.3)
    axes = figure.subplots(1, 4, sharey=True)
    y = list(range(len(groups)))[::-1]
    panels = [
        ("Accuracy", "accuracy"),
        ("Fool rate", "fool_rate"),
        ("Detection rate", "sensitivity"),
        ("AUC (readers' mean)", "auc_mrmc"),
    ]
    for ax, (title, column) in zip(axes, panels, strict=True):
        _style(ax)
        for row_y, group in zip(y, groups, strict=True):
            row = summary.pooled(group)
            value = row[column]
            if value is None:
                ax.text(0.5, row_y, "no reads", color=GREY, ha="center", va="center", fontsize=8)
                continue
            if column == "auc_mrmc":
                low, high = row["auc_mrmc_ci_low"], row["auc_mrmc_ci_high"]
                if low is None:  # no interval: the variance could not be estimated
                    ax.plot([value], [row_y], "o", color=BLUE, markersize=6)
                    continue
                low, high = max(low, 0.0), min(high, 1.0)
            elif column == "accuracy":
                low, high = row["accuracy_ci_low"], row["accuracy_ci_high"]
                if row["accuracy_boot_low"] is not None:
                    ax.plot(
                        [row["accuracy_boot_low"], row["accuracy_boot_high"]],
                        [row_y, row_y],
                        color=ORANGE,
                        linewidth=5,
                        alpha=0.55,
                        solid_capstyle="butt",
                    )
            else:
                low, high = summary.details[group].intervals[column]
            ax.plot([low, high], [row_y, row_y], color=BLUE, linewidth=1.6)
            ax.plot([value], [row_y], "o", color=BLUE, markersize=6)
        ax.axvline(0.5, color=GREY, linewidth=0.8, linestyle="--")
        ax.set_xlim(0, 1)
        ax.set_title(title, fontsize=10)
        ax.set_ylim(-0.7, len(groups) - 0.3)
    axes[0].set_yticks(y, names)
    figure.supxlabel(
        "Dot and line: Wilson 95% on pooled reads; orange band: two-way bootstrap 95%; "
        "AUC: reader-averaged with the MRMC 95% interval (iMRMC)",
        fontsize=8,
        color=GREY,
    )

    return _svg(
        figure, "Forest plot: accuracy, fool rate, detection rate and AUC per model with 95% intervals"
    )


@plot
def comparison_plot(comparisons: list[dict]) -> SafeString:
    """The difference of the reader-averaged AUCs of each pair of arms, with its 95% interval."""
    rows = list(comparisons)
    figure = _figure(7.5, 0.45 * len(rows) + 1.4)
    ax = figure.subplots()
    _style(ax)
    y = list(range(len(rows)))[::-1]
    reach = 0.1
    for row_y, row in zip(y, rows, strict=True):
        value = row["difference"]
        if value is None:
            ax.text(0, row_y, "no AUC", color=GREY, ha="center", va="center", fontsize=8)
            continue
        if row["ci_low"] is not None:
            ax.plot([row["ci_low"], row["ci_high"]], [row_y, row_y], color=BLUE, linewidth=1.6)
            reach = max(reach, abs(row["ci_low"]), abs(row["ci_high"]))
        reach = max(reach, abs(value))
        significant = row["p"] is not None and row["p"] < 0.05
        ax.plot([value], [row_y], "o", color=ORANGE if significant else BLUE, markersize=6)
    ax.axvline(0, color=GREY, linewidth=0.8, linestyle="--")
    ax.set_xlim(-min(1.0, reach * 1.15), min(1.0, reach * 1.15))
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.set_yticks(y, [textwrap.shorten(f"{r['model_a']} − {r['model_b']}", 48) for r in rows])
    ax.set_xlabel("Difference of reader-averaged AUC, 95% interval (orange: p < 0.05)", fontsize=9)
    return _svg(
        figure, "Forest plot: difference of the reader-averaged AUC of each pair of arms, with 95% intervals"
    )


@plot
def kappa_heatmap(readers: list[str], kappa) -> SafeString:
    """Pairwise Cohen's kappa between readers; blank where it is undefined."""
    import numpy as np

    n = len(readers)
    side = min(9, 1.6 + 0.45 * n)
    figure = _figure(side + 1.2, side)
    ax = figure.subplots()
    _style(ax)
    values = np.array(kappa, dtype=float)
    np.fill_diagonal(values, np.nan)  # a reader against themself says nothing
    masked = np.ma.masked_invalid(values)
    image = ax.imshow(masked, cmap="RdBu", vmin=-1, vmax=1)
    step = max(1, math.ceil(n / 40))  # at most 40 names an axis, so that they stay legible
    ticks = range(0, n, step)
    names = [readers[k] for k in ticks]
    ax.set_xticks(ticks, names, rotation=90 if n > 8 else 0, fontsize=8 if n > 20 else 10)
    ax.set_yticks(ticks, names, fontsize=8 if n > 20 else 10)
    if n <= 12:
        hidden = np.ma.getmaskarray(masked)
        for a in range(n):
            for b in range(n):
                if not hidden[a, b]:
                    value = float(masked[a, b])
                    colour = "white" if abs(value) > 0.6 else "black"
                    ax.text(b, a, f"{value:.2f}", ha="center", va="center", fontsize=8, color=colour)
    bar = figure.colorbar(image, ax=ax, shrink=0.8)
    bar.ax.tick_params(colors=INK, labelcolor=INK)
    bar.outline.set_edgecolor(INK)
    bar.set_label("Cohen's kappa", color=INK)
    ax.set_title("Blank: no kappa (the same reader, or undefined)", fontsize=8, color=GREY)
    return _svg(figure, "Heatmap of pairwise Cohen's kappa between readers")


@plot
def reading_time_plot(summary: Summary) -> SafeString:
    """Seconds of viewing per image, for real images and each model: median, quartiles, 5th-95th."""
    names = [name for name, stats in summary.reading_seconds.items() if stats["n"]]
    figure = _figure(9, 0.45 * max(len(names), 1) + 1.2)
    ax = figure.subplots()
    _style(ax)
    if not names:
        ax.text(0.5, 0.5, "no reads yet", ha="center", va="center", color=GREY, transform=ax.transAxes)
        ax.set_yticks([])
        return _svg(figure, "Reading time per image: no reads yet")
    stats = [
        {
            "label": "Real images" if name == "real" else name,
            "med": s["median"],
            "q1": s["q1"],
            "q3": s["q3"],
            "whislo": s["p5"],
            "whishi": s["p95"],
            "fliers": [],
        }
        for name, s in ((name, summary.reading_seconds[name]) for name in names)
    ][::-1]
    ink = {"color": INK}
    ax.bxp(
        stats,
        orientation="horizontal",
        showfliers=False,
        patch_artist=True,
        boxprops={"facecolor": BLUE, "alpha": 0.6, "edgecolor": INK},
        medianprops={"color": INK},
        whiskerprops=ink,
        capprops=ink,
    )
    ax.set_xlabel("Seconds per image (box: quartiles and median; whiskers: 5th to 95th percentile)")
    top = max(s["whishi"] for s in stats)
    ax.set_xlim(0, top * 1.05 if top > 0 else 1)
    return _svg(figure, "Reading time per image, real images and each model")


@plot
def unsure_plot(summary: Summary) -> SafeString:
    """The share of reads answered unsure, per arm and per reader."""
    arms = [("All", summary.pooled("all"))] + [
        ("Real images" if g == "real" else g, summary.pooled(g)) for g in summary.groups[1:]
    ]
    readers = [
        (row["reader"], row) for row in summary.rows if row["group"] == "all" and row["reader"] != "all"
    ]
    figure = _figure(9, 0.3 * max(len(arms), len(readers), 1) + 1.3)
    left, right = figure.subplots(1, 2)
    for ax, items, title in ((left, arms, "Per arm"), (right, readers, "Per reader")):
        _style(ax)
        labels = [label for label, _ in items][::-1]
        values = [row["unsure_rate"] or 0.0 for _, row in items][::-1]
        ax.barh(range(len(items)), values, color=ORANGE, alpha=0.8)
        ax.set_yticks(range(len(items)), labels)
        top = max(values, default=0)
        ax.set_xlim(0, max(0.05, min(1.0, math.ceil(top * 10 + 0.5) / 10)))
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("Unsure rate")
    return _svg(figure, "Unsure rates per arm and per reader")


@plot
def measures_scatter(section: dict) -> SafeString:
    """Each machine measure (a panel) against the readers' fool rate, one labelled point per arm,
    with the panel's Spearman rho in its title; measures known for fewer than 2 arms left out."""
    correlations = [c for c in section["correlations"] if c.n >= 2]
    if not correlations:
        return mark_safe("")  # one arm: a single point says nothing a table does not
    columns = min(3, len(correlations))
    rows = math.ceil(len(correlations) / columns)
    figure = _figure(3.2 * columns, 2.7 * rows)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax, found in zip(axes, correlations, strict=False):
        _style(ax)
        key = found.column.key
        points = [
            (arm["values"][key], arm["fool_rate"], arm["model"])
            for arm in section["arms"]
            if arm["values"].get(key) is not None and arm["fool_rate"] is not None
        ]
        ax.plot([x for x, _, _ in points], [y for _, y, _ in points], "o", color=BLUE, markersize=6)
        for x, y, name in points:
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7, color=INK)
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel(found.column.label, fontsize=8)
        ax.set_ylabel("Fool rate", fontsize=8)
        title = f"ρ = {found.rho:.2f}, p = {found.p:.3g}" if found.rho is not None else f"n = {found.n}: no ρ"
        ax.set_title(title, fontsize=9)
    for ax in axes[len(correlations) :]:
        ax.set_visible(False)
    return _svg(
        figure, "Scatter plots: each machine measure against the readers' fool rate, one point per arm"
    )


@plot
def region_heatmaps(panels: list[dict]) -> SafeString:
    """Where readers marked what gave images away: per group, the density of its marks over its
    average image (brighter and more opaque where more was marked)."""
    import matplotlib
    import numpy as np

    n = len(panels)
    columns = min(n, 4)
    rows = math.ceil(n / columns)
    figure = _figure(2.7 * columns, 2.9 * rows)
    axes = figure.subplots(rows, columns, squeeze=False)
    for ax, panel in zip(axes.flat, panels, strict=False):
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
        if panel["average"] is not None:
            ax.imshow(panel["average"], cmap="gray", vmin=0, vmax=1, extent=(0, 1, 1, 0))
        else:
            ax.set_facecolor("black")
        density = panel["density"]
        level = density / density.max()
        colours = matplotlib.colormaps["inferno"](level)
        colours[..., 3] = 0.8 * np.sqrt(level)  # faint marks stay visible, the image shows through
        ax.imshow(colours, extent=(0, 1, 1, 0), interpolation="bilinear")
        ax.set_xlim(0, 1)
        ax.set_ylim(1, 0)
        marks = f"{panel['n']} mark{'s' if panel['n'] != 1 else ''}"
        ax.set_title(textwrap.fill(f"{panel['name']} · {marks}", 30), fontsize=9, color=INK)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    return _svg(figure, "Heat maps of the regions readers marked, over each group's average image")
