"""Figures from what a run logged to MLflow: a run's learning curves, a sweep's eval accuracy per child.

Built on `matplotlib.figure.Figure` directly (no pyplot): no display, no global state, safe in sweeps.
Free of TensorFlow: the sweep callback (fedlm/tracking/sweep.py) runs in Hydra's launching process.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence

import mlflow
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from fedlm.tracking import names
from fedlm.vocab import RANDOM_GUESS

RUN_FIGURE = "plots/learning_curves.png"
SWEEP_FIGURE = "plots/sweep_eval_accuracy.png"
CLIENT_ACCURACY_FIGURE = "plots/client_accuracy.png"
RUN_IMAGE_KEY = "learning_curves"  # the same figure as an MLflow image: the chart view shows runs' side by side


def _history(client: mlflow.MlflowClient, run_id: str, key: str) -> tuple[list[int], list[float]]:
    points = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
    return [s for s, _ in points], [v for _, v in points]


def run_figure(run_id: str, client: mlflow.MlflowClient | None = None) -> Figure:
    """Train and eval loss (left) and accuracy (right, with the random-guess baseline) against round."""
    client = client or mlflow.MlflowClient()
    run = client.get_run(run_id)
    fig = Figure(figsize=(10, 4), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    for ax, what in ((loss_ax, "loss"), (acc_ax, "accuracy")):
        for split, style in (("train", "-"), ("eval", "o-")):
            steps, values = _history(client, run_id, f"{split}/{what}")
            if steps:
                ax.plot(steps, values, style, label=f"{split}/{what}", markersize=4)
        _round_axis(ax)
        ax.legend()
    loss_ax.set_ylabel("loss (masked cross-entropy, nats/char)")
    acc_ax.set_ylabel("next-character accuracy")
    # The baseline as text, not a line: a line at 0.012 would flatten curves that live around 0.5.
    acc_ax.set_title(f"random guess: {RANDOM_GUESS['random_guess_accuracy']:.3f}", fontsize="small")
    loss_ax.set_title(
        f"random guess: {math.log(RANDOM_GUESS['random_guess_perplexity']):.2f} "
        f"(perplexity {RANDOM_GUESS['random_guess_perplexity']:.0f})",
        fontsize="small",
    )
    fig.suptitle(_title(f"{run.info.run_name}  ({run_id[:8]})", fig), fontsize="medium")
    return fig


def _round_axis(ax) -> None:
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)


def _title(text: str, fig: Figure) -> str:
    """Wrapped to the figure's width (about 11 characters per inch at the medium font size)."""
    return "\n".join(textwrap.wrap(text, int(fig.get_figwidth() * 11), max_lines=3, placeholder=" …"))


def sweep_figure(
    parent_run_id: str, metric: str = names.EVAL_ACCURACY, client: mlflow.MlflowClient | None = None
) -> Figure:
    """One line per child run of a sweep parent: `metric` against round, labelled by the child's run name."""
    client = client or mlflow.MlflowClient()
    parent = client.get_run(parent_run_id)
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
        order_by=["attributes.start_time ASC"],
    )
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.subplots()
    for child in children:
        steps, values = _history(client, child.info.run_id, metric)
        if steps:
            ax.plot(steps, values, "o-", label=child.info.run_name, markersize=4)
    _round_axis(ax)
    ax.set_ylabel(metric)
    ax.legend(fontsize="small")
    ax.set_title(_title(f"{parent.info.run_name}: {metric} of {len(children)} runs", fig), fontsize="medium")
    return fig


def client_accuracy_figure(
    accuracy: Sequence[float], sampled: Sequence[bool] | None, round_num: int, title: str = ""
) -> Figure:
    """A histogram of the eval clients' own accuracy at round `round_num`, stacked by whether the client trained in
    some round so far (`sampled`), with the p10 / p50 / p90 marked."""
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.subplots()
    acc = np.asarray(accuracy, dtype=float)
    bins = np.linspace(acc.min(), acc.max(), 21) if acc.max() > acc.min() else 10
    if sampled is None:
        ax.hist(acc, bins=bins, label=f"{acc.size} eval clients")
    else:
        seen = np.asarray(sampled, dtype=bool)
        ax.hist(
            [acc[seen], acc[~seen]],
            bins=bins,
            stacked=True,
            label=[f"trained in rounds 1–{round_num} ({seen.sum()})", f"never sampled ({(~seen).sum()})"],
        )
    for q in (10, 50, 90):
        ax.axvline(float(np.percentile(acc, q)), color="black", linestyle=":", linewidth=1)
        ax.annotate(f"p{q}", (float(np.percentile(acc, q)), 1), xycoords=("data", "axes fraction"), va="top")
    ax.set_xlabel("next-character accuracy of the client's test split (padding and OOV excluded)")
    ax.set_ylabel("eval clients")
    ax.legend(fontsize="small")
    ax.set_title(_title(f"{title}per-client eval accuracy at round {round_num}", fig), fontsize="medium")
    return fig


def pixels(fig: Figure) -> np.ndarray:
    """The figure rendered: (height, width, RGB) uint8."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def log_run_figure(run_id: str, step: int = 0) -> None:
    """The run's learning curves as an artifact of the run, and as its image `learning_curves` at `step` (the last
    round), which the experiment's chart view shows next to other runs'."""
    client = mlflow.MlflowClient()
    fig = run_figure(run_id, client)
    client.log_figure(run_id, fig, RUN_FIGURE)
    client.log_image(run_id, pixels(fig), key=RUN_IMAGE_KEY, step=step, synchronous=True)


def log_sweep_figure(parent_run_id: str, metric: str = names.EVAL_ACCURACY) -> None:
    """The children's `metric` overlaid, as an artifact of the sweep's parent run."""
    mlflow.MlflowClient().log_figure(parent_run_id, sweep_figure(parent_run_id, metric), SWEEP_FIGURE)
