"""`python -m fedlm.report`: a sweep's child runs grouped by their config without `seed`, with statistics over seeds.

Per group: n, the final `eval/loss` and `eval/accuracy` as a mean with its Student's t confidence interval, the
rounds and the megabytes communicated (`comm/total_bytes`) to reach a target accuracy (their means, and how many runs
never reached it); between every two groups,
Welch's t-test of those finals. The statistics are pure functions of plain numbers (`mean_ci`, `rounds_to_target`,
`welch`, `build`): a run is a `ChildRun` of its params and eval histories, whichever store it came from. The rest
reads a sweep from MLflow (`read`), renders the report (text, Markdown, CSV), draws each group's mean eval curves
with their confidence bands, and logs it all to the sweep's parent run (`log`).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

from fedlm.conf.schema import ReportTarget
from fedlm.errors import ConfigError
from fedlm.tracking import names, tags

SEED = "seed"  # the param a group's runs differ in
TARGET_KEY = "report.target_accuracy"  # the runs' own target (their config's; ReportTarget)
MARKDOWN, GROUPS_CSV, TESTS_CSV, RUNS_CSV, CURVES = (
    f"report/{name}" for name in ("report.md", "groups.csv", "tests.csv", "runs.csv", "eval_curves.png")
)
NAN = float("nan")


# ---- statistics: plain numbers in, plain numbers out -------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Interval:
    """A sample's mean with its Student's t confidence interval (n - 1 degrees of freedom); for n = 1 the bounds and
    the standard deviation are NaN: one run has no spread to measure."""

    mean: float
    low: float
    high: float
    std: float  # the sample standard deviation (ddof 1)
    n: int

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> Interval:
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("mean_ci of no values")
    mean = float(x.mean())
    if x.size == 1:
        return Interval(mean, NAN, NAN, NAN, 1)
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf((1 + confidence) / 2, x.size - 1)) * std / math.sqrt(x.size)
    return Interval(mean, mean - half, mean + half, std, int(x.size))


def rounds_to_target(accuracy: Mapping[int, float], target: float) -> int | None:
    """The first evaluated round whose accuracy is at least `target` (0: the starting model already is), None if
    no evaluation reached it. Rounds are only as fine as the evaluations (`eval_every`)."""
    return next((step for step in sorted(accuracy) if accuracy[step] >= target), None)


def megabytes_to_target(accuracy: Mapping[int, float], total_bytes: Mapping[int, float], target: float) -> float | None:
    """The communication (`comm/total_bytes`, down and up, in MB = 10^6 bytes) spent by the first evaluated round
    whose accuracy is at least `target` (0 at round 0); None if no evaluation reached it, or the run did not log
    that round's bytes (runs older than the communication ledger)."""
    round_num = rounds_to_target(accuracy, target)
    if round_num is None:
        return None
    if round_num == 0:
        return 0.0
    return total_bytes[round_num] / 1e6 if round_num in total_bytes else None


@dataclasses.dataclass(frozen=True)
class WelchTest:
    """Welch's two-sided t-test of mean(b) - mean(a), variances not assumed equal, and that difference's confidence
    interval (Welch-Satterthwaite degrees of freedom). NaN but the difference when either sample has one value,
    or neither has any spread."""

    difference: float
    low: float
    high: float
    t: float
    df: float
    p: float


def welch(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> WelchTest:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    difference = float(b.mean() - a.mean())
    untestable = WelchTest(difference, NAN, NAN, NAN, NAN, NAN)
    if a.size < 2 or b.size < 2:
        return untestable
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    if va + vb == 0:
        return untestable
    result = stats.ttest_ind(b, a, equal_var=False)
    df = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
    half = float(stats.t.ppf((1 + confidence) / 2, df)) * math.sqrt(va + vb)
    return WelchTest(
        difference, difference - half, difference + half, float(result.statistic), float(df), float(result.pvalue)
    )


@dataclasses.dataclass(frozen=True)
class ChildRun:
    """A finished run of the sweep, as the report reads it: its params (as MLflow keeps them, strings) and its eval
    metrics by round."""

    run_id: str
    name: str
    params: Mapping[str, str]
    loss: Mapping[int, float]  # eval/loss
    accuracy: Mapping[int, float]  # eval/accuracy
    total_bytes: Mapping[int, float] = dataclasses.field(default_factory=dict)  # comm/total_bytes

    @property
    def seed(self) -> str:
        return self.params.get(SEED, "?")

    @property
    def config(self) -> tuple[tuple[str, str], ...]:
        """What the run's group shares: its params but `seed`."""
        return tuple(sorted((k, v) for k, v in self.params.items() if k != SEED))


@dataclasses.dataclass(frozen=True)
class Group:
    """Runs of one config, different seeds: their finals' intervals and their rounds to `target`."""

    label: str
    runs: tuple[ChildRun, ...]
    target: float
    loss: Interval  # of the final eval/loss
    accuracy: Interval  # of the final eval/accuracy
    rounds: tuple[int | None, ...]  # to reach `target`, per run
    megabytes: tuple[float | None, ...] = ()  # communicated until then, per run

    @property
    def n(self) -> int:
        return len(self.runs)

    @property
    def rounds_mean(self) -> float | None:
        """Over the runs that reached the target; None if none did."""
        reached = [r for r in self.rounds if r is not None]
        return float(np.mean(reached)) if reached else None

    @property
    def megabytes_mean(self) -> float | None:
        """Over the runs that reached the target and logged their bytes; None if none did."""
        reached = [m for m in self.megabytes if m is not None]
        return float(np.mean(reached)) if reached else None

    @property
    def never(self) -> int:
        return sum(r is None for r in self.rounds)

    def curve(self, metric: str, confidence: float) -> list[tuple[int, Interval]]:
        """The group's mean of `metric` (names.EVAL_LOSS or EVAL_ACCURACY) at every evaluated round, with its
        interval over the runs evaluated there."""
        histories = [r.loss if metric == names.EVAL_LOSS else r.accuracy for r in self.runs]
        steps = sorted(set().union(*histories))
        return [(s, mean_ci([h[s] for h in histories if s in h], confidence)) for s in steps]


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Groups `a` and `b`: Welch's tests of their final eval loss and accuracy, b minus a."""

    a: Group
    b: Group
    loss: WelchTest
    accuracy: WelchTest

    @property
    def note(self) -> str:
        n = min(self.a.n, self.b.n)
        if n == 1:
            return "n = 1: no test"
        if math.isnan(self.loss.p) and math.isnan(self.accuracy.p):
            return "no spread: no test"
        return "n < 3: weak" if n < 3 else ""


def final(history: Mapping[int, float]) -> float:
    """The value at the last round logged."""
    return history[max(history)]


def group_runs(runs: Sequence[ChildRun], order: Sequence[str] = ()) -> dict[str, list[ChildRun]]:
    """The runs by config without `seed`, each group labelled by the params that tell the groups apart, as
    overrides (`optimizer=adam · client_weighting=uniform`): an option's own keys are left out when the option
    itself differs (`optimizer.learning_rate` when `optimizer` does), and keys of `order` (the sweep's swept keys)
    come first; when the swept keys alone tell every group apart, only they (an experiment file's choice, not the
    algorithm and optimizer it sets as well). One group: `all runs`."""
    by_config: dict[tuple, list[ChildRun]] = {}
    for run in runs:
        by_config.setdefault(run.config, []).append(run)
    configs = [dict(c) for c in by_config]
    differing = sorted(k for k in set().union(*configs) if len({c.get(k) for c in configs}) > 1)
    rank = {k: i for i, k in enumerate(order)}

    def labels(keys: Sequence[str]) -> list[str]:
        keys = sorted(keys, key=lambda k: (rank.get(k, len(rank)), k))
        return [names.SEP.join(f"{k}={c.get(k, '<absent>')}" for k in keys) or "all runs" for c in configs]

    swept = labels([k for k in order if k in differing])
    shown = labels([k for k in differing if not any(k.startswith(f"{p}.") for p in differing)])
    if len(set(shown)) < len(configs):  # an option's key tells two groups of the same option apart: show them all
        shown = labels(differing)
    return dict(zip(swept if len(set(swept)) == len(configs) else shown, by_config.values()))


@dataclasses.dataclass(frozen=True)
class Report:
    """A sweep's report: its groups (lowest mean final eval loss first), every pair of them compared, and notes on
    what the numbers leave out."""

    groups: tuple[Group, ...]
    comparisons: tuple[Comparison, ...]
    confidence: float
    notes: tuple[str, ...]
    sweep: str = "sweep"  # the parent run's name
    parent_id: str = ""
    experiment: str = ""

    @property
    def title(self) -> str:
        where = [f"parent run {self.parent_id}"] if self.parent_id else []
        where += [f"experiment {self.experiment}"] if self.experiment else []
        return f"Sweep {self.sweep}" + (f" ({', '.join(where)})" if where else "")

    def text(self) -> str:
        return _render(self, _aligned)

    def markdown(self) -> str:
        return _render(self, _markdown, markdown=True)


def build(
    runs: Sequence[ChildRun],
    *,
    confidence: float = 0.95,
    target: float | None = None,
    order: Sequence[str] = (),
    notes: Sequence[str] = (),
    **about: str,
) -> Report:
    """The report of finished `runs`. `target`: the accuracy whose rounds are counted; None: each run's own
    (`report.target_accuracy` param, which its group shares; ReportTarget's default for runs older than it).
    `order`: the swept keys, for the labels. `notes`: about runs left out. `about`: the Report's sweep, parent_id,
    experiment."""
    default = ReportTarget.target_accuracy
    groups = []
    for label, members in group_runs(runs, order).items():
        goal = target if target is not None else float(members[0].params.get(TARGET_KEY, default))
        groups.append(
            Group(
                label,
                tuple(members),
                goal,
                mean_ci([final(r.loss) for r in members], confidence),
                mean_ci([final(r.accuracy) for r in members], confidence),
                tuple(rounds_to_target(r.accuracy, goal) for r in members),
                tuple(megabytes_to_target(r.accuracy, r.total_bytes, goal) for r in members),
            )
        )
    groups.sort(key=lambda g: g.loss.mean)
    with warnings.catch_warnings():  # SciPy warns where the report says: too few runs, no spread
        warnings.simplefilter("ignore", RuntimeWarning)
        comparisons = tuple(
            Comparison(
                a,
                b,
                welch([final(r.loss) for r in a.runs], [final(r.loss) for r in b.runs], confidence),
                welch([final(r.accuracy) for r in a.runs], [final(r.accuracy) for r in b.runs], confidence),
            )
            for i, a in enumerate(groups)
            for b in groups[i + 1 :]
        )
    return Report(tuple(groups), comparisons, confidence, tuple(notes) + _notes(groups, comparisons), **about)


def _notes(groups: Sequence[Group], comparisons: Sequence[Comparison]) -> tuple[str, ...]:
    notes = []
    single = [g.label for g in groups if g.n == 1]
    if single:
        notes.append(
            f"one run (n = 1), no interval and no test: {', '.join(single)}; sweep seeds too (`seed=0,1,2`, or "
            "`hydra.sweeper.params.seed: range(3)` in an experiment file)"
        )
    for g in groups:
        seeds = [r.seed for r in g.runs]
        if twice := sorted({s for s in seeds if seeds.count(s) > 1}):
            notes.append(
                f"{g.label}: seed {', '.join(twice)} more than once: the same run repeated (identical up to "
                "nondeterminism) narrows the interval without telling more"
            )
    if comparisons:
        m = len(comparisons)
        notes.append(
            "p: Welch's two-sided t-test"
            + (
                f", not corrected for the {m} comparisons (Bonferroni: p < {0.05 / m:.2g} for 5% over all)"
                if m > 1
                else ""
            )
        )
    return tuple(notes)


# ---- rendering ---------------------------------------------------------------------------------------------


def _value(x: Interval) -> str:
    return f"{x.mean:.4f} (n = 1)" if x.n == 1 else f"{x.mean:.4f} ± {x.half_width:.4f}"


def _difference(w: WelchTest) -> str:
    return f"{w.difference:+.4f}" + ("" if math.isnan(w.low) else f" ± {(w.high - w.low) / 2:.4f}")


def _p(p: float) -> str:
    return "–" if math.isnan(p) else f"{p:.3g}"


def _targets(report: Report) -> list[float]:
    return sorted({g.target for g in report.groups})


def group_table(report: Report) -> tuple[list[str], list[list[str]]]:
    targets = _targets(report)
    to = f"rounds to ≥ {targets[0]:g}" if len(targets) == 1 else "rounds to target"
    header = ["group", "n", "seeds", f"final {names.EVAL_LOSS}", f"final {names.EVAL_ACCURACY}", to, "MB to target"]
    header += ["never reached"]
    rows = [
        [
            g.label,
            str(g.n),
            ",".join(r.seed for r in g.runs),
            _value(g.loss),
            _value(g.accuracy),
            ("–" if g.rounds_mean is None else f"{g.rounds_mean:.1f}")
            + (f" (≥ {g.target:g})" if len(targets) > 1 else ""),
            "–" if g.megabytes_mean is None else f"{g.megabytes_mean:.3g}",
            f"{g.never} of {g.n}",
        ]
        for g in report.groups
    ]
    return header, rows


def comparison_table(report: Report) -> tuple[list[str], list[list[str]]]:
    header = ["A", "B", "n", f"Δ final {names.EVAL_LOSS} (B − A)", "p", f"Δ final {names.EVAL_ACCURACY}", "p", "note"]
    rows = [
        [c.a.label, c.b.label, f"{c.a.n} vs {c.b.n}", _difference(c.loss), _p(c.loss.p)]
        + [_difference(c.accuracy), _p(c.accuracy.p), c.note]
        for c in report.comparisons
    ]
    return header, rows


def _aligned(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows])


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _render(report: Report, table, markdown: bool = False) -> str:
    level = f"{report.confidence:.0%}"
    targets = _targets(report)
    target = f"≥ {targets[0]:g}" if len(targets) == 1 else "≥ each group's target"
    runs = sum(g.n for g in report.groups)
    lines = [
        f"# {report.title}" if markdown else report.title,
        "",
        f"{runs} finished runs in {len(report.groups)} groups by their config without `seed`.",
        *[""] * markdown,
        f"final: the last evaluation's value, mean ± the half-width of its {level} confidence interval (Student's t, "
        "n − 1 degrees of freedom).",
        *[""] * markdown,
        f"rounds to {target}: the first evaluated round whose `{names.EVAL_ACCURACY}` reaches "
        "`report.target_accuracy`, mean over the runs that did; MB to target: the `comm/total_bytes` (down and up, "
        "10^6 bytes) spent by then, mean over the same runs.",
        "",
        table(*group_table(report)),
    ]
    if report.comparisons:
        lines += ["", f"Welch's t-tests of the finals: B − A ± its {level} interval.", ""]
        lines += [table(*comparison_table(report))]
    if report.notes:
        lines += ["", "Notes:", *(f"- {n}" for n in report.notes)]
    text = "\n".join(lines)
    return text + "\n" if markdown else text.replace("`", "")


def _csv(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(["" if isinstance(v, float) and math.isnan(v) else v for v in row] for row in rows)
    return out.getvalue()


def _interval_columns(prefix: str) -> list[str]:
    return [f"{prefix}_{x}" for x in ("mean", "ci_low", "ci_high", "std")]


def groups_csv(report: Report) -> str:
    header = ["group", "n", "seeds", "run_ids", *_interval_columns("final_eval_loss")]
    header += [*_interval_columns("final_eval_accuracy"), "target_accuracy", "rounds_to_target_mean"]
    header += ["megabytes_to_target_mean", "never_reached"]
    rows = [
        [g.label, g.n, " ".join(r.seed for r in g.runs), " ".join(r.run_id for r in g.runs)]
        + [g.loss.mean, g.loss.low, g.loss.high, g.loss.std]
        + [g.accuracy.mean, g.accuracy.low, g.accuracy.high, g.accuracy.std]
        + [g.target, "" if g.rounds_mean is None else g.rounds_mean]
        + ["" if g.megabytes_mean is None else g.megabytes_mean, g.never]
        for g in report.groups
    ]
    return _csv(header, rows)


def tests_csv(report: Report) -> str:
    header = ["a", "b", "n_a", "n_b", "metric", "difference_b_minus_a", "ci_low", "ci_high", "t", "df", "p", "note"]
    rows = [
        [c.a.label, c.b.label, c.a.n, c.b.n, metric, w.difference, w.low, w.high, w.t, w.df, w.p, c.note]
        for c in report.comparisons
        for metric, w in ((f"final {names.EVAL_LOSS}", c.loss), (f"final {names.EVAL_ACCURACY}", c.accuracy))
    ]
    return _csv(header, rows)


def runs_csv(report: Report) -> str:
    header = ["group", "run_id", "run_name", "seed", "final_eval_loss", "final_eval_accuracy", "last_round"]
    header += ["target_accuracy", "rounds_to_target", "megabytes_to_target"]
    rows = [
        [g.label, r.run_id, r.name, r.seed, final(r.loss), final(r.accuracy), max(r.loss), g.target]
        + ["" if rounds is None else rounds, "" if mb is None else mb]
        for g in report.groups
        for r, rounds, mb in zip(g.runs, g.rounds, g.megabytes)
    ]
    return _csv(header, rows)


def curves_figure(report: Report):
    """Each group's mean eval loss (left) and accuracy (right, with the target) against round, with its
    confidence band (none for n = 1)."""
    from matplotlib.figure import Figure

    from fedlm.tracking.plots import _round_axis, _title

    fig = Figure(figsize=(11, 4.5), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    for ax, metric in ((loss_ax, names.EVAL_LOSS), (acc_ax, names.EVAL_ACCURACY)):
        for g in report.groups:
            curve = g.curve(metric, report.confidence)
            steps = [s for s, _ in curve]
            (line,) = ax.plot(steps, [x.mean for _, x in curve], "o-", markersize=4, label=f"{g.label} (n={g.n})")
            if g.n > 1:
                lows, highs = [x.low for _, x in curve], [x.high for _, x in curve]
                ax.fill_between(steps, lows, highs, color=line.get_color(), alpha=0.2, linewidth=0)
        _round_axis(ax)
        ax.set_ylabel(f"{metric}, mean over seeds")
    for target in _targets(report):
        acc_ax.axhline(target, color="grey", linestyle="--", linewidth=1, label=f"target {target:g}")
    # A band of few runs can reach past what the metric can be (t = 12.7 at n = 2): the axes stop there.
    low, high = acc_ax.get_ylim()
    acc_ax.set_ylim(max(low, 0.0), min(high, 1.0))
    loss_ax.set_ylim(bottom=max(loss_ax.get_ylim()[0], 0.0))
    acc_ax.legend(fontsize="small")
    title = (
        f"{report.sweep} ({report.parent_id[:8]}): each group's mean over seeds, {report.confidence:.0%} confidence "
        "band (Student's t)"
    )
    fig.suptitle(_title(title, fig), fontsize="medium")
    return fig


# ---- MLflow: the sweep in, the report out -----------------------------------------------------------------


def find_parent(parent: str, experiment_name: str, uri: str):
    """The sweep's parent run (`mlflow.entities.Run`): `parent` is its id, or `latest`: the last started parent of a
    fedlm sweep in the experiment."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    if parent == "latest":
        experiment = client.get_experiment_by_name(experiment_name)
        found = (
            []
            if experiment is None
            else client.search_runs(
                [experiment.experiment_id],
                filter_string=f"tags.`{tags.SWEEP_ROLE}` = 'parent'",
                order_by=["attributes.start_time DESC"],
                max_results=1,
            )
        )
        if not found:
            where = "no such experiment" if experiment is None else "no sweep in it"
            raise ConfigError(
                f"parent=latest: {where} (mlflow.experiment_name={experiment_name!r} at {uri}); run a sweep first "
                "(`python -m fedlm.run -m seed=0,1,2 optimizer=sgd,adam`), or give parent=<its parent run id>"
            )
        return found[0]
    try:
        return client.get_run(parent)
    except MlflowException as e:
        raise ConfigError(f"parent={parent!r}: no such run in {uri}") from e


def read(parent: str, experiment_name: str, uri: str, *, target: float | None, confidence: float) -> Report:
    """The report of the sweep `parent` (an id or `latest`), from its finished children; those that did not finish
    (failed, killed, still running) are left out, and named in a note."""
    import mlflow

    from fedlm.tracking import sweep

    run = find_parent(parent, experiment_name, uri)
    parent_id = run.info.run_id
    children = sweep.children(run.info.experiment_id, parent_id)
    if not children:
        if of := run.data.tags.get("mlflow.parentRunId"):
            raise ConfigError(
                f"parent={parent!r}: run {parent_id} ({run.info.run_name}) is a child; its sweep: parent={of}"
            )
        raise ConfigError(
            f"parent={parent!r}: run {parent_id} ({run.info.run_name}) has no child runs: not a sweep's parent, or its "
            "jobs never started (a sweep is `python -m fedlm.run -m …`)"
        )
    client = mlflow.MlflowClient()
    runs, left_out = [], []
    for child in children:
        name = child.info.run_name
        if child.info.status != "FINISHED":
            left_out.append(f"{name} ({child.info.status})")
            continue
        loss, accuracy, total_bytes = (
            {m.step: m.value for m in client.get_metric_history(child.info.run_id, key)}
            for key in (names.EVAL_LOSS, names.EVAL_ACCURACY, names.COMM_TOTAL_BYTES)
        )
        if not loss or not accuracy:
            left_out.append(f"{name} (no {names.EVAL_LOSS} or {names.EVAL_ACCURACY})")
            continue
        runs.append(ChildRun(child.info.run_id, name, dict(child.data.params), loss, accuracy, total_bytes))
    if not runs:
        raise ConfigError(
            f"parent={parent!r}: none of the {len(children)} child runs of {parent_id} ({run.info.run_name}) finished: "
            f"{', '.join(left_out)}"
        )
    notes = [f"left out, not finished: {', '.join(left_out)}"] if left_out else []
    if run.info.status == "RUNNING":
        notes.append("the sweep is still running (its parent run is RUNNING): more runs may come")
    return build(
        runs,
        confidence=confidence,
        target=target,
        order=run.data.tags.get(tags.SWEPT_KEYS, "").split(),
        notes=notes,
        sweep=run.info.run_name,
        parent_id=parent_id,
        experiment=client.get_experiment(run.info.experiment_id).name,
    )


def log(report: Report) -> list[str]:
    """The report as artifacts of the sweep's parent run: Markdown, CSVs (groups, tests, runs), the curves' PNG.
    Their paths."""
    import mlflow

    client = mlflow.MlflowClient()
    for path, text in (
        (MARKDOWN, report.markdown()),
        (GROUPS_CSV, groups_csv(report)),
        (TESTS_CSV, tests_csv(report)),
        (RUNS_CSV, runs_csv(report)),
    ):
        client.log_text(report.parent_id, text, path)
    client.log_figure(report.parent_id, curves_figure(report), CURVES)
    return [MARKDOWN, GROUPS_CSV, TESTS_CSV, RUNS_CSV, CURVES]
