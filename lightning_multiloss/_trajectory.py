"""The weight trajectory as a CSV file and a PNG plot, and the plot on the loggers in use."""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Iterable, Sequence
from typing import Any

log = logging.getLogger(__name__)

FIGURE_TAG = "loss_weights"
"""The name of the plot on the loggers: TensorBoard's tag, W&B's key."""


def write_trajectory(
    stem: str,
    task_names: Sequence[str],
    steps: Sequence[int],
    epochs: Sequence[int],
    weights: Sequence[Sequence[float]],
    plot: bool = True,
    loggers: Iterable[Any] = (),
    step: int | None = None,
) -> list[str]:
    """Write ``<stem>.csv`` (step, epoch, one column per task) and, if ``plot``, ``<stem>.png``.

    The plot also goes to each TensorBoard, MLflow and W&B logger among ``loggers`` (at ``step``),
    and the CSV to MLflow's, with the plot or without: see :func:`log_plot`.
    """
    os.makedirs(os.path.dirname(stem) or ".", exist_ok=True)
    csv_path = f"{stem}.csv"
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "epoch", *task_names])
        for row_step, epoch, row in zip(steps, epochs, weights, strict=True):
            writer.writerow([row_step, epoch, *row])
    paths = [csv_path]
    if plot:
        fig = trajectory_figure(task_names, steps, weights)
        png_path = f"{stem}.png"
        fig.savefig(png_path, dpi=120, format="png")  # PNG whatever the name (not read from its extension)
        paths.append(png_path)
        for logger in loggers:
            log_plot(logger, fig, png_path, csv_path, step)
    else:
        for logger in loggers:
            log_plot(logger, None, None, csv_path, step)  # the CSV alone, where a logger keeps files
    return paths


def trajectory_figure(task_names: Sequence[str], steps: Sequence[int], weights: Sequence[Sequence[float]]) -> Any:
    """The plot of the weights against the optimizer steps: a matplotlib ``Figure`` of 7 × 4 inches
    (wider by a column of the legend beside the axes for each 25 tasks beyond the first 25).

    A Figure of its own, not pyplot's: the process's backend (a notebook's inline one) and pyplot's
    list of open figures stay the user's; ``savefig`` draws it with Agg.
    """
    from matplotlib.figure import Figure

    count = len(task_names)
    columns = -(-count // _LEGEND_ROWS) if _LEGEND_INSIDE < count <= _LEGEND_MOST else 1
    # Wider by each column of a legend beside the axes, so that the lines keep their room.
    fig = Figure(figsize=(7 + _COLUMN_INCHES * (columns - 1), 4), layout="constrained")
    ax = fig.subplots()
    for i, name in enumerate(task_names):
        # Markers when there are few points, so that a short run still shows its values.
        marker = "o" if len(steps) <= 30 else None
        ax.plot(steps, [row[i] for row in weights], label=name, marker=marker, **_line_style(i, len(task_names)))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("task weight")
    ax.set_title("Loss weights during training")
    ax.grid(alpha=0.3)
    if count > _LEGEND_MOST:
        # A legend of hundreds of entries leaves no room for the lines: a colour bar of the tasks'
        # positions (the columns of the CSV) instead.
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize

        mapping = ScalarMappable(Normalize(0, count - 1), cmap="turbo")
        bar = fig.colorbar(mapping, ax=ax)
        bar.set_label(f"task number (0 to {count - 1}, in the CSV's order)", fontsize=8)
    elif count > _LEGEND_INSIDE:
        # Beside the axes, in as many columns as it takes (the figure keeps its size): inside them,
        # 50 tasks' entries ran off the figure after the 16th and hid the lines. Long names cut.
        handles, labels = ax.get_legend_handles_labels()
        short = [_shortened(name) for name in labels]
        if len(set(short)) < len(short):  # names alike at both ends: numbered, in the CSV's order
            short = [_shortened(name, _LABEL_CHARS - len(f"{i} ")) for i, name in enumerate(labels)]
            short = [f"{i} {name}" for i, name in enumerate(short)]
        fig.legend(handles, short, loc="outside right upper", fontsize=6, ncols=columns, handlelength=1.5)
    else:
        ax.legend()
    return fig


_LEGEND_INSIDE = 10  # tasks whose legend fits inside the axes
_LEGEND_MOST = 50  # tasks named in a legend beside the axes; beyond, a colour bar
_LEGEND_ROWS = 25  # entries in a column of the legend beside the axes
_LABEL_CHARS = 20  # the longest name the legend beside the axes shows whole
_COLUMN_INCHES = 1.6  # the width of a column of that legend
_DASHES = ("-", "--", ":", "-.")


def _shortened(name: str, chars: int = 0) -> str:
    """``name`` cut in the middle to at most ``chars`` (default ``_LABEL_CHARS``) characters: names of
    many tasks often share a start (``loss_regression_target_0``, ``…_1``) and differ at the end,
    which a cut at the end lost."""
    chars = chars or _LABEL_CHARS
    if len(name) <= chars:
        return name
    tail = (chars - 1) // 2
    return name[: chars - 1 - tail] + "…" + name[-tail:]


def _line_style(index: int, count: int) -> dict[str, Any]:
    """Task ``index``'s line among ``count``: matplotlib's ten colours (C0, C1, ...) for up to ten
    tasks, ``tab20``'s twenty for up to twenty, beyond that a colour each from a colour map, the
    neighbours told apart by their dashes (the ten colours came round again: t0, t10 and t20 were one)."""
    from matplotlib import colormaps

    if count <= 10:
        return {"color": f"C{index}"}
    if count <= 20:
        return {"color": colormaps["tab20"](index)}
    return {"color": colormaps["turbo"](index / (count - 1)), "linestyle": _DASHES[index % len(_DASHES)]}


def logger_kind(logger: Any) -> str | None:
    """``"tensorboard"``, ``"mlflow"`` or ``"wandb"`` for those Lightning loggers (either package), else ``None``.

    Decided by the class names, so that neither the loggers' packages nor Lightning are imported here.
    """
    kinds = {"TensorBoardLogger": "tensorboard", "MLFlowLogger": "mlflow", "WandbLogger": "wandb"}
    for cls in type(logger).__mro__:
        if cls.__name__ in kinds and cls.__module__.startswith(("pytorch_lightning.", "lightning.")):
            return kinds[cls.__name__]
    return None


def log_plot(logger: Any, figure: Any, png_path: str | None, csv_path: str, step: int | None) -> None:
    """Put the trajectory plot where the logger's users look, through the logger's public API.

    TensorBoard: ``SummaryWriter.add_figure`` (tag ``loss_weights``); MLflow: the PNG and the CSV
    as artifacts of the logger's run; W&B: ``WandbLogger.log_image`` (key ``loss_weights``). Other
    loggers get nothing. Without a plot (``figure`` and ``png_path`` ``None``: ``plot=False``)
    MLflow gets the CSV alone. A logger that fails (a tracking server out of reach) is named in a
    warning: the files on disk are written already, and the run goes on.
    """
    kind = logger_kind(logger)
    if kind is None or (png_path is None and kind != "mlflow"):
        return
    try:
        if kind == "tensorboard":
            writer = logger.experiment
            writer.add_figure(FIGURE_TAG, figure, global_step=step, close=False)
            writer.flush()
        elif kind == "mlflow":
            for path in (png_path, csv_path):
                if path is not None:
                    logger.experiment.log_artifact(logger.run_id, path)
        else:
            logger.log_image(key=FIGURE_TAG, images=[png_path], step=step)
    except Exception as error:
        log.warning("the loss-weight plot could not be logged to %s: %s", type(logger).__name__, error)
