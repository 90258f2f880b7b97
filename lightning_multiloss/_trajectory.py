"""The weight trajectory as a CSV file and a PNG plot."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence


def write_trajectory(
    stem: str,
    task_names: Sequence[str],
    steps: Sequence[int],
    epochs: Sequence[int],
    weights: Sequence[Sequence[float]],
    plot: bool = True,
) -> list[str]:
    """Write ``<stem>.csv`` (step, epoch, one column per task) and, if ``plot``, ``<stem>.png``."""
    os.makedirs(os.path.dirname(stem) or ".", exist_ok=True)
    csv_path = f"{stem}.csv"
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "epoch", *task_names])
        for step, epoch, row in zip(steps, epochs, weights, strict=True):
            writer.writerow([step, epoch, *row])
    paths = [csv_path]
    if plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        for i, name in enumerate(task_names):
            # Markers when there are few points, so that a short run still shows its values.
            ax.plot(steps, [row[i] for row in weights], label=name, marker="o" if len(steps) <= 30 else None)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("task weight")
        ax.set_title("Loss weights during training")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        png_path = f"{stem}.png"
        fig.savefig(png_path, dpi=120)
        plt.close(fig)
        paths.append(png_path)
    return paths
