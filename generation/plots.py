"""The loss curve of a training job, drawn on the server as inline SVG like the results page's plots.

It reuses the results page's drawing helpers (studies/plots.py): the same figure, axes in
`currentColor` for the admin's dark and light themes, and a failed drawing that is logged
and left out instead of taking the page down.
"""

from django.utils.safestring import SafeString

from studies.plots import BLUE, GREY, _figure, _style, _svg, plot

# Above this many points the curve is drawn from the mean of each run of points.
CURVE_POINTS = 400


@plot
def loss_curve(loss_history: list) -> SafeString:
    """Training loss against step ([step, mean loss] pairs, as the worker writes them)."""
    figure = _figure(7, 2.6)
    ax = figure.subplots()
    _style(ax)
    if not loss_history:
        ax.text(0.5, 0.5, "no loss yet", ha="center", va="center", color=GREY, transform=ax.transAxes)
        ax.set_yticks([])
        ax.set_xticks([])
        return _svg(figure, "Training loss: no steps yet")
    steps, losses = _thinned(loss_history)
    ax.plot(steps, losses, color=BLUE, linewidth=1.4, marker="o" if len(steps) < 30 else None, markersize=3)
    ax.set_xlabel("Step")
    ax.set_ylabel("Loss (mean squared error)")
    ax.set_xlim(0, max(steps[-1], 1) * 1.02)
    if min(losses) > 0 and max(losses) / min(losses) > 20:
        from matplotlib.ticker import FuncFormatter, NullFormatter

        ax.set_yscale("log")
        # Plain numbers: the log axis's own labels are mathtext, which an SVG with text kept as
        # text would show as "$\\mathdefault{10^{0}}$".
        ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
    return _svg(figure, f"Training loss by step, {len(loss_history)} points up to step {loss_history[-1][0]}")


def _thinned(loss_history: list) -> tuple[list[float], list[float]]:
    """At most CURVE_POINTS points, each the mean of a run of the history, so a long run's
    SVG stays small."""
    run = -(-len(loss_history) // CURVE_POINTS)
    groups = [loss_history[i : i + run] for i in range(0, len(loss_history), run)]
    steps = [group[-1][0] for group in groups]
    losses = [sum(loss for _, loss in group) / len(group) for group in groups]
    return steps, losses
