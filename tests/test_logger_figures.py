"""The weight-trajectory plot reaches TensorBoard, MLflow and W&B (offline), read back with each real package.

Each test trains the toy model with fixed weights (so every row of the trajectory is known by
hand) under one logger, then reads what the logger stored with that logger's own reader.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from matplotlib import colors, rcParams
from matplotlib import image as mpimg

from lightning_multiloss import LossWeightingCallback
from lightning_multiloss.weighting import Fixed
from tests._models import ToyNet, quiet_trainer, toy_loader

WEIGHTS = [0.25, 2.0]
STEPS = 2 * 4  # 2 epochs of 64 samples in batches of 16


def fit(tmp_path: Path, logger: object, plot: bool = True) -> None:
    trainer = quiet_trainer(
        max_epochs=2,
        logger=logger,
        default_root_dir=str(tmp_path),
        log_every_n_steps=1,
        callbacks=[LossWeightingCallback(plot=plot)],
    )
    trainer.fit(ToyNet(Fixed(WEIGHTS)), toy_loader(64))


def expected_csv_rows() -> list[list[str]]:
    # One row per optimizer step, then the weights in force at the end (one step past the last).
    return (
        [["step", "epoch", "cls", "reg"]]
        + [[str(step), str((step - 1) // 4), "0.25", "2.0"] for step in range(1, STEPS + 1)]
        + [[str(STEPS + 1), str(STEPS // 4), "0.25", "2.0"]]
    )


def has_colour(rgb: np.ndarray, colour: str) -> bool:
    """Whether a pixel of ``rgb`` (floats in [0, 1]) has ``colour`` (a task's line in the plot)."""
    target = np.array(colors.to_rgb(colour))
    return bool((np.abs(rgb[..., :3] - target).max(axis=-1) < 0.02).any())


def assert_is_the_trajectory_plot(rgb: np.ndarray, height: int, width: int) -> None:
    assert rgb.shape[:2] == (height, width)
    # The two tasks' lines, in matplotlib's first two colours (cls: C0, reg: C1).
    assert has_colour(rgb, "C0") and has_colour(rgb, "C1")


def test_tensorboard_gets_the_plot_as_an_image_summary(tmp_path: Path) -> None:
    from pytorch_lightning.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    fit(tmp_path, TensorBoardLogger(str(tmp_path), name="tb", version=""))
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0})
    events.Reload()
    assert "loss_weights" in events.Tags()["images"]
    (image,) = events.Images("loss_weights")
    assert image.step == STEPS
    rgb = mpimg.imread(io.BytesIO(image.encoded_image_string), format="png")
    # add_figure renders the 7 x 4 inch figure at the figure's own resolution.
    dpi = rcParams["figure.dpi"]
    assert_is_the_trajectory_plot(rgb, round(4 * dpi), round(7 * dpi))


@pytest.mark.parametrize("plot", [True, False], ids=["plot", "plot=False"])
def test_mlflow_run_gets_the_plot_and_the_csv_as_artifacts(tmp_path: Path, plot: bool) -> None:
    # plot=False sent nothing: the CSV went to MLflow only beside the plot.
    from mlflow import MlflowClient
    from pytorch_lightning.loggers import MLFlowLogger

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    logger = MLFlowLogger(experiment_name="weights", tracking_uri=uri, artifact_location=str(tmp_path / "artifacts"))
    fit(tmp_path, logger, plot=plot)
    client = MlflowClient(uri)
    expected = ["loss_weights.csv", "loss_weights.png"] if plot else ["loss_weights.csv"]
    assert sorted(a.path for a in client.list_artifacts(logger.run_id)) == expected
    folder = Path(client.download_artifacts(logger.run_id, "", str(tmp_path / "download")))
    with open(folder / "loss_weights.csv", newline="") as f:
        assert list(csv.reader(f)) == expected_csv_rows()
    if plot:
        assert_is_the_trajectory_plot(mpimg.imread(folder / "loss_weights.png"), 4 * 120, 7 * 120)  # at 120 dpi


def test_wandb_offline_run_gets_the_plot_as_an_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import wandb
    from pytorch_lightning.loggers import WandbLogger

    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "home"))  # nothing written outside the test's folder
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = WandbLogger(project="weights", save_dir=str(tmp_path), offline=True)
    try:
        fit(tmp_path, logger)
    finally:
        wandb.finish()
    (run,) = (tmp_path / "wandb").glob("offline-run-*")
    (png,) = (run / "files" / "media" / "images").glob("loss_weights_*.png")
    assert_is_the_trajectory_plot(mpimg.imread(png), 4 * 120, 7 * 120)


@pytest.mark.parametrize("package", ["pytorch_lightning", "lightning.pytorch"])
def test_the_loggers_of_both_lightning_packages_are_recognised(package: str) -> None:
    import importlib

    from lightning_multiloss._trajectory import logger_kind

    loggers = importlib.import_module(f"{package}.loggers")
    kinds = {
        name: logger_kind(object.__new__(getattr(loggers, name)))  # the class decides; nothing is started
        for name in ("TensorBoardLogger", "MLFlowLogger", "WandbLogger", "CSVLogger")
    }
    expected = {"TensorBoardLogger": "tensorboard", "MLFlowLogger": "mlflow", "WandbLogger": "wandb", "CSVLogger": None}
    assert kinds == expected


@pytest.mark.slow
def test_each_job_of_a_multiloss_train_sweep_gets_its_own_wandb_run(tmp_path: Path) -> None:
    """Jobs of a sweep share one process: without ending its W&B run, job 1 would log into job 0's."""
    import subprocess
    import sys

    from tests.test_train_cli import clean_env

    env = clean_env()
    env.update({var: str(tmp_path / "home") for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR")})
    env["WANDB_SILENT"] = "true"
    args = ["-m", "logger=[csv,wandb]", "seed=1,2", "trainer=debug", "trainer.enable_progress_bar=false"]
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "multiloss-train"), *args, "hydra.sweep.dir=sweep"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    for job in ("0", "1"):
        (run,) = (tmp_path / "sweep" / job / "wandb").glob("offline-run-*")
        (png,) = (run / "files" / "media" / "images").glob("loss_weights_*.png")
        assert_is_the_trajectory_plot(mpimg.imread(png), 4 * 120, 7 * 120)


def test_a_logger_that_refuses_the_plot_is_named_and_the_run_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from pytorch_lightning.loggers import TensorBoardLogger

    class FullDiskLogger(TensorBoardLogger):
        """Its writer fails on images only (a full disk, a broken tracking server)."""

        @property
        def experiment(self):  # type: ignore[no-untyped-def,override]
            writer = super().experiment

            def refuse(*args, **kwargs):  # type: ignore[no-untyped-def]
                raise OSError("no space left on device")

            writer.add_figure = refuse
            return writer

    with caplog.at_level("WARNING", logger="lightning_multiloss"):
        fit(tmp_path, FullDiskLogger(str(tmp_path), name="tb", version=""))
    assert "the loss-weight plot could not be logged to FullDiskLogger: no space left on device" in caplog.text
    assert (tmp_path / "tb" / "loss_weights.png").is_file()  # the files are written all the same


def test_the_plot_leaves_the_users_backend_and_figures(tmp_path: Path) -> None:
    """A notebook's backend and its open figures survive a fit: the Callback draws a Figure of its
    own (pyplot's matplotlib.use("Agg") switched the whole process, and plt.show() after fit drew nothing)."""
    import matplotlib
    import matplotlib.pyplot as plt

    before = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        users = plt.figure()
        fit(tmp_path, logger=False)
        assert matplotlib.get_backend() == "svg"
        assert plt.get_fignums() == [users.number]
        rgb = mpimg.imread(tmp_path / "loss_weights.png")
        assert_is_the_trajectory_plot(rgb, 480, 840)
    finally:
        plt.close("all")
        matplotlib.use(before)


@pytest.mark.parametrize(("count", "prefix"), [(3, "task_"), (15, "task_"), (50, "a_rather_long_task_name_")])
def test_every_tasks_line_looks_its_own_and_the_legend_fits_in_the_figure(count: int, prefix: str) -> None:
    # Beyond ten tasks matplotlib's colours came round again (t0, t10, t20 looked alike) and, at 50,
    # the legend inside the axes ran off the figure after the 16th task and hid the lines.
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from lightning_multiloss._trajectory import trajectory_figure

    names = [f"{prefix}{i}" for i in range(count)]
    steps = list(range(0, 200, 4))
    figure = trajectory_figure(names, steps, [[1.0 + 0.01 * i for i in range(count)] for _ in steps])
    renderer = FigureCanvasAgg(figure).get_renderer()
    figure.draw(renderer)
    (ax,) = figure.axes
    looks = {(colors.to_hex(line.get_color()), line.get_linestyle()) for line in ax.get_lines()}
    assert len(looks) == count
    (legend,) = figure.legends or [ax.get_legend()]
    shown = [text.get_text() for text in legend.get_texts()]
    # Cut in the middle: the names share their start and differ at the end.
    assert shown == (names if count <= 10 else [n if len(n) <= 20 else n[:10] + "…" + n[-9:] for n in names])
    assert len(set(shown)) == count
    assert ax.get_window_extent(renderer).width >= 0.6 * figure.bbox.width  # the lines keep their room
    box, frame = legend.get_window_extent(renderer), figure.bbox
    assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
    assert figure.get_size_inches().tolist() == [7.0 if count <= 25 else 8.6, 4.0]
    if count > 10:  # beside the axes, not over the lines
        assert box.x0 >= ax.get_window_extent(renderer).x1


def test_the_plot_of_hundreds_of_tasks_shows_a_colour_bar_of_their_positions() -> None:
    # A legend of 300 entries collapsed the axes to nothing and ran over them.
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from lightning_multiloss._trajectory import trajectory_figure

    count = 300
    steps = list(range(0, 100, 4))
    figure = trajectory_figure([f"task_{i}" for i in range(count)], steps, [[1.0] * count for _ in steps])
    renderer = FigureCanvasAgg(figure).get_renderer()
    figure.draw(renderer)
    ax, bar = figure.axes
    assert not figure.legends and ax.get_legend() is None
    assert ax.get_window_extent(renderer).width >= 0.6 * figure.bbox.width
    assert bar.get_ylim() == (0.0, count - 1.0) and bar.get_ylabel() == "task number (0 to 299, in the CSV's order)"
    label = bar.yaxis.label.get_window_extent(renderer)
    assert figure.bbox.x0 <= label.x0 and label.x1 <= figure.bbox.x1 and label.y0 >= 0 and label.y1 <= figure.bbox.y1
    first, last = ax.get_lines()[0].get_color(), ax.get_lines()[-1].get_color()
    assert colors.to_hex(first) == colors.to_hex(matplotlib.colormaps["turbo"](0.0))
    assert colors.to_hex(last) == colors.to_hex(matplotlib.colormaps["turbo"](1.0))


def test_legend_labels_of_names_alike_at_both_ends_are_numbered() -> None:
    # Cut in the middle, depth_scale_{i}_smooth_l1_loss all read "depth_scal…h_l1_loss".
    from lightning_multiloss._trajectory import trajectory_figure

    names = [f"depth_scale_{i}_smooth_l1_loss" for i in range(12)]
    figure = trajectory_figure(names, [0, 1], [[1.0] * 12, [1.0] * 12])
    shown = [text.get_text() for text in figure.legends[0].get_texts()]
    assert len(set(shown)) == 12 and all(len(label) <= 20 for label in shown)
    assert shown[0].startswith("0 depth_") and shown[11].startswith("11 depth_")
