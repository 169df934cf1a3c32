"""`python -m fedlm.report`'s statistics, checked against SciPy, and the report of a sweep with known numbers that
the tests log to a store of their own, as fedlm's sweep callback and runs tag them."""

from __future__ import annotations

import csv
import io
import math
import time

import mlflow
import numpy as np
import pytest
from mlflow.entities import Metric, Param
from scipy import stats

from fedlm import report as command
from fedlm.errors import ConfigError
from fedlm.tracking import report, tags
from tests.conftest import compose_config


@pytest.mark.parametrize("n", [2, 3, 5, 8])
@pytest.mark.parametrize("confidence", [0.9, 0.95])
def test_mean_ci_is_students_t_interval(n, confidence):
    x = np.random.default_rng(n).normal(1.75, 0.02, n)
    ci = report.mean_ci(x, confidence)
    low, high = stats.t.interval(confidence, n - 1, loc=np.mean(x), scale=stats.sem(x))
    assert (ci.mean, ci.low, ci.high, ci.std, ci.n) == pytest.approx((np.mean(x), low, high, np.std(x, ddof=1), n))
    # Its bounds are where a one-sample t-test starts to reject at 1 - confidence.
    assert stats.ttest_1samp(x, ci.low).pvalue == pytest.approx(1 - confidence)
    assert stats.ttest_1samp(x, ci.high).pvalue == pytest.approx(1 - confidence)


def test_mean_ci_of_known_numbers_and_of_one_run():
    ci = report.mean_ci([1.0, 2.0, 3.0])  # mean 2, sd 1, t(0.975, 2) = 4.3027
    assert (ci.mean, ci.half_width) == pytest.approx((2.0, 4.302652729911275 / math.sqrt(3)))
    one = report.mean_ci([1.7])
    assert one.mean == 1.7 and one.n == 1 and math.isnan(one.low) and math.isnan(one.std)


@pytest.mark.parametrize("seed", range(4))
def test_welch_is_scipys_unequal_variance_test_and_its_interval_agrees(seed):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(1.75, 0.01, 3), rng.normal(1.76, 0.03, 4 + seed)
    w = report.welch(a, b)
    scipy_test = stats.ttest_ind(b, a, equal_var=False)
    assert (w.difference, w.t, w.p) == pytest.approx((np.mean(b) - np.mean(a), scipy_test.statistic, scipy_test.pvalue))
    # The difference's interval: a t-test of the shifted samples rejects exactly at its bounds.
    for bound in (w.low, w.high):
        assert stats.ttest_ind(b - bound, a, equal_var=False).pvalue == pytest.approx(0.05)


def test_welch_needs_two_runs_a_side_and_some_spread():
    assert math.isnan(report.welch([1.0], [1.0, 2.0]).p)
    same = report.welch([1.0, 1.0], [2.0, 2.0])
    assert same.difference == 1.0 and math.isnan(same.p)


def test_rounds_to_target_is_the_first_evaluated_round_at_or_above_it():
    accuracy = {0: 0.40, 2: 0.49, 4: 0.50, 6: 0.52}
    assert report.rounds_to_target(accuracy, 0.5) == 4
    assert report.rounds_to_target(accuracy, 0.4) == 0  # the starting model already was
    assert report.rounds_to_target(accuracy, 0.53) is None


def _run(seed: int, optimizer: str = "sgd", **params: str) -> report.ChildRun:
    p = {"optimizer": optimizer, "optimizer.learning_rate": "0.5" if optimizer == "sgd" else "0.001"}
    return report.ChildRun(f"id{seed}", "", p | params | {"seed": str(seed)}, {0: 1.0}, {0: 0.1})


def test_groups_are_configs_without_seed_named_by_what_tells_them_apart():
    runs = [_run(0), _run(1), _run(0, "adam"), _run(1, "adam")]
    groups = report.group_runs(runs)
    assert {k: [r.seed for r in v] for k, v in groups.items()} == {
        "optimizer=sgd": ["0", "1"],
        "optimizer=adam": ["0", "1"],
    }
    # An option's key is named where it tells two groups of that option apart.
    runs.append(_run(0, "adam", **{"optimizer.learning_rate": "0.01"}))
    assert set(report.group_runs(runs)) == {
        "optimizer=sgd · optimizer.learning_rate=0.5",
        "optimizer=adam · optimizer.learning_rate=0.001",
        "optimizer=adam · optimizer.learning_rate=0.01",
    }
    assert list(report.group_runs([_run(0), _run(1)])) == ["all runs"]
    assert list(
        report.group_runs([_run(0, rounds="3"), _run(0, "adam", rounds="5")], order=["rounds", "optimizer"])
    ) == [
        "rounds=3 · optimizer=sgd",
        "rounds=5 · optimizer=adam",
    ]
    # The swept key tells the groups apart: only it, not what else its choice sets (an experiment file's optimizer)
    by_file = [_run(0, "sgd", **{"experiment/x": "a"}), _run(0, "adam", **{"experiment/x": "b"})]
    assert list(report.group_runs(by_file, order=["experiment/x", "seed"])) == ["experiment/x=a", "experiment/x=b"]
    assert list(report.group_runs(by_file, order=["seed"])) == [
        "experiment/x=a · optimizer=sgd",
        "experiment/x=b · optimizer=adam",
    ]


# ---- a sweep with known numbers, in a store of the test's own --------------------------------------------

# Eval (loss, accuracy) at rounds 0..3 per child; a group's runs differ only in seed.
KNOWN = {
    "sgd": [
        [(2.0, 0.40), (1.9, 0.45), (1.8, 0.50), (1.70, 0.52)],  # 0.5 at round 2
        [(2.0, 0.40), (1.9, 0.44), (1.8, 0.48), (1.75, 0.50)],  # round 3
        [(2.0, 0.40), (1.9, 0.43), (1.85, 0.46), (1.80, 0.49)],  # never
    ],
    "adam": [
        [(2.0, 0.40), (1.85, 0.51), (1.85, 0.51), (1.90, 0.50)],
        [(2.0, 0.41), (1.8, 0.50), (1.8, 0.5), (1.80, 0.52)],
    ],
    "yogi": [[(2.0, 0.40), (2.0, 0.40), (2.0, 0.40), (2.0, 0.40)]],
}
# comm/total_bytes after round r: r times a round's bytes (yogi's run predates the ledger: none logged)
BYTES_PER_ROUND = {"sgd": 1.5e6, "adam": 2e6}


def _log_child(client, experiment_id, parent_id, optimizer, seed, history, status="FINISHED"):
    run = client.create_run(
        experiment_id,
        run_name=f"{optimizer} · seed={seed}",
        tags={"mlflow.parentRunId": parent_id, tags.SWEEP_DIR: "/sweep"},
    )
    params = {"optimizer": optimizer, "seed": str(seed), "rounds": "3", "eval_every": "1"}
    params |= {"optimizer.learning_rate": {"sgd": "0.5", "adam": "0.001", "yogi": "0.01"}[optimizer]}
    params |= {"report.target_accuracy": "0.5"}
    now = int(time.time() * 1000)
    metrics = [
        Metric(key, value, now, step)
        for step, point in enumerate(history)
        for key, value in zip(("eval/loss", "eval/accuracy"), point)
    ]
    if optimizer in BYTES_PER_ROUND:
        metrics += [Metric("comm/total_bytes", step * BYTES_PER_ROUND[optimizer], now, step) for step in range(4)]
    client.log_batch(run.info.run_id, metrics=metrics, params=[Param(k, v) for k, v in params.items()])
    client.set_terminated(run.info.run_id, status)
    return run.info.run_id


@pytest.fixture
def known_sweep(tmp_path):
    """A store with one sweep of KNOWN (plus a failed child), tagged as fedlm's sweep callback tags a parent; the
    process's tracking URI as it was afterwards (the report sets it)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    experiment_id = client.create_experiment("known")
    parent = client.create_run(
        experiment_id,
        run_name="optimizer × seed",
        tags={tags.SWEEP_DIR: "/sweep", tags.SWEEP_ROLE: "parent", tags.SWEPT_KEYS: "optimizer seed"},
    ).info.run_id
    ids = {
        (optimizer, seed): _log_child(client, experiment_id, parent, optimizer, seed, history)
        for optimizer, runs in KNOWN.items()
        for seed, history in enumerate(runs)
    }
    failed = _log_child(client, experiment_id, parent, "sgd", 3, KNOWN["sgd"][0][:2], status="FAILED")
    client.set_terminated(parent)
    before = mlflow.get_tracking_uri()
    yield {"uri": uri, "client": client, "parent": parent, "ids": ids, "failed": failed, "experiment": experiment_id}
    mlflow.set_tracking_uri(before)


def _config(sweep, *overrides: str):
    return compose_config([f"mlflow.tracking_uri={sweep['uri']}", "mlflow.experiment_name=known", *overrides], "report")


def test_report_of_known_numbers_matches_scipy(known_sweep):
    result = command.read(_config(known_sweep))  # parent=latest: the only sweep of experiment `known`
    assert result.parent_id == known_sweep["parent"]
    finals = {o: [runs[-1] for runs in histories] for o, histories in KNOWN.items()}
    assert [g.label for g in result.groups] == ["optimizer=sgd", "optimizer=adam", "optimizer=yogi"]  # best first
    for group in result.groups:
        optimizer = group.label.split("=")[1]
        loss, accuracy = (np.array([f[i] for f in finals[optimizer]]) for i in (0, 1))
        assert group.n == len(loss) and [r.seed for r in group.runs] == [str(s) for s in range(len(loss))]
        assert group.loss.mean == pytest.approx(loss.mean()) and group.accuracy.mean == pytest.approx(accuracy.mean())
        if group.n > 1:
            for x, ci in ((loss, group.loss), (accuracy, group.accuracy)):
                assert (ci.low, ci.high) == pytest.approx(stats.t.interval(0.95, len(x) - 1, x.mean(), stats.sem(x)))
    sgd, adam, yogi = result.groups
    assert (sgd.rounds, sgd.rounds_mean, sgd.never) == ((2, 3, None), 2.5, 1)
    assert (adam.rounds, adam.rounds_mean, adam.never) == ((1, 1), 1.0, 0)
    assert (yogi.rounds_mean, yogi.never) == (None, 1)
    # MB = 10^6 bytes spent by the round that reached the target, over the runs that reached it
    assert sgd.megabytes == (3.0, 4.5, None) and sgd.megabytes_mean == pytest.approx(3.75)
    assert adam.megabytes == (2.0, 2.0) and yogi.megabytes_mean is None

    by_pair = {(c.a.label, c.b.label): c for c in result.comparisons}
    assert len(by_pair) == 3
    sgd_adam = by_pair["optimizer=sgd", "optimizer=adam"]
    for i, test in ((0, sgd_adam.loss), (1, sgd_adam.accuracy)):
        a, b = ([f[i] for f in finals[o]] for o in ("sgd", "adam"))
        assert test.p == pytest.approx(stats.ttest_ind(b, a, equal_var=False).pvalue)
        assert test.difference == pytest.approx(np.mean(b) - np.mean(a))
    assert sgd_adam.note == "n < 3: weak"
    assert by_pair["optimizer=sgd", "optimizer=yogi"].note == "n = 1: no test"
    assert math.isnan(by_pair["optimizer=adam", "optimizer=yogi"].loss.p)

    text = result.text()
    assert "left out, not finished: sgd · seed=3 (FAILED)" in text
    assert "one run (n = 1), no interval and no test: optimizer=yogi" in text
    assert "not corrected for the 3 comparisons (Bonferroni: p < 0.017" in text
    assert f"optimizer=sgd   3  0,1,2  {sgd.loss.mean:.4f} ± {sgd.loss.half_width:.4f}" in text
    header, rows = report.group_table(result)
    assert header[5:] == ["rounds to ≥ 0.5", "MB to target", "never reached"]
    assert [row[5:] for row in rows] == [["2.5", "3.75", "1 of 3"], ["1.0", "2", "0 of 2"], ["–", "–", "1 of 1"]]
    assert f"optimizer=yogi  1  0      {yogi.loss.mean:.4f} (n = 1)" in text


def test_a_target_on_the_command_line_wins_over_the_runs_own(known_sweep):
    result = command.read(_config(known_sweep, "report.target_accuracy=0.45", f"parent={known_sweep['parent']}"))
    sgd = result.groups[0]
    assert sgd.target == 0.45 and sgd.rounds == (1, 2, 2) and "rounds to ≥ 0.45" in result.text()


def test_the_report_is_logged_to_the_parent_run(known_sweep):
    result = command.read(_config(known_sweep))
    paths = report.log(result)
    client, parent = known_sweep["client"], known_sweep["parent"]
    assert sorted(a.path for a in client.list_artifacts(parent, "report")) == sorted(paths)
    assert set(paths) == {report.MARKDOWN, report.GROUPS_CSV, report.TESTS_CSV, report.RUNS_CSV, report.CURVES}

    def load(path: str) -> str:
        return mlflow.artifacts.load_text(f"runs:/{parent}/{path}")

    groups = list(csv.DictReader(io.StringIO(load(report.GROUPS_CSV))))
    assert [row["group"] for row in groups] == [g.label for g in result.groups]
    sgd = groups[0]
    x = np.array([h[-1][0] for h in KNOWN["sgd"]])
    low, high = stats.t.interval(0.95, 2, x.mean(), stats.sem(x))
    assert float(sgd["final_eval_loss_ci_low"]) == pytest.approx(low)
    assert float(sgd["final_eval_loss_ci_high"]) == pytest.approx(high)
    assert (sgd["rounds_to_target_mean"], sgd["never_reached"], groups[2]["final_eval_loss_ci_low"]) == ("2.5", "1", "")
    assert (sgd["megabytes_to_target_mean"], groups[2]["megabytes_to_target_mean"]) == ("3.75", "")
    tests_rows = list(csv.DictReader(io.StringIO(load(report.TESTS_CSV))))
    assert len(tests_rows) == 6 and {r["metric"] for r in tests_rows} == {"final eval/loss", "final eval/accuracy"}
    runs = list(csv.DictReader(io.StringIO(load(report.RUNS_CSV))))
    assert {r["run_id"] for r in runs} == set(known_sweep["ids"].values())  # the failed one left out
    markdown = load(report.MARKDOWN)
    assert markdown.startswith("# Sweep optimizer × seed") and "| optimizer=sgd | 3 | 0,1,2 |" in markdown


def test_bad_parents_are_named_with_what_to_give(known_sweep):
    client, experiment = known_sweep["client"], known_sweep["experiment"]
    child = known_sweep["ids"]["sgd", 0]
    single = client.create_run(experiment, run_name="fedavg sgd→sgd 10c").info.run_id
    lonely = client.create_run(client.create_experiment("nosweeps"), run_name="one").info.run_id
    all_failed = client.create_run(experiment, tags={tags.SWEEP_ROLE: "parent"}).info.run_id
    _log_child(client, experiment, all_failed, "sgd", 0, KNOWN["sgd"][0], status="KILLED")
    cases = [
        (["parent=nosuchrun"], r"parent='nosuchrun': no such run in sqlite:///"),
        ([f"parent={child}"], rf"parent='{child}': run {child} \(sgd · seed=0\) is a child; its sweep: parent="),
        ([f"parent={single}"], rf"parent='{single}': run {single} \(fedavg sgd→sgd 10c\) has no child runs"),
        ([f"parent={all_failed}"], r"none of the 1 child runs of .* finished: sgd · seed=0 \(KILLED\)"),
        (["mlflow.experiment_name=nothing"], r"parent=latest: no such experiment \(mlflow.experiment_name='nothing' "),
        (["mlflow.experiment_name=nosweeps"], r"parent=latest: no sweep in it \(mlflow.experiment_name='nosweeps'"),
        (["parent=' '"], r"parent=' ': give a sweep's parent run id, or latest"),
        (["report.target_accuracy=0"], r"report.target_accuracy=0.0: must be > 0.0 and <= 1.0"),
        (["report.confidence=1"], r"report.confidence=1.0: must be > 0.0 and < 1.0"),
    ]
    assert lonely
    for overrides, message in cases:
        with pytest.raises(ConfigError, match=message):
            command.read(_config(known_sweep, *overrides))
    with pytest.raises(ConfigError, match=r"mlflow.tracking_uri='sqlite:////no/such.db': no such store"):
        command.read(compose_config(["mlflow.tracking_uri=sqlite:////no/such.db"], "report"))


def test_a_groups_curve_is_its_mean_and_interval_per_round_and_repeated_seeds_are_noted():
    runs = [
        report.ChildRun(f"id{i}", "", {"seed": str(seed)}, {0: 2.0, 1: loss}, {0: 0.4, 1: acc})
        for i, (seed, loss, acc) in enumerate([(0, 1.8, 0.45), (1, 1.7, 0.47), (1, 1.75, 0.5)])
    ]
    result = report.build(runs)
    (group,) = result.groups
    (_, start), (_, end) = group.curve("eval/accuracy", 0.95)
    assert (start.mean, start.half_width) == pytest.approx((0.4, 0.0))
    x = np.array([0.45, 0.47, 0.5])
    assert (end.low, end.high) == pytest.approx(stats.t.interval(0.95, 2, x.mean(), stats.sem(x)))
    assert group.label == "all runs" and "all runs: seed 1 more than once" in result.text()
    assert not result.comparisons and "Welch" not in result.text()


def test_a_fedsgd_group_shows_no_client_optimizer_it_did_not_use():
    """McMahan et al.'s sweep, FedAvg against FedSGD, as its jobs compose: FedSGD's clients take no step, so its runs
    hold no client-optimizer params and the report's labels give it none (it showed `optimizer.learning_rate=0.5`,
    a rate FedSGD never used, against FedAvg's 1.0)."""
    from hydra import compose, initialize_config_dir

    from fedlm.conf import schema
    from fedlm.tracking import store
    from tests.conftest import CONF_DIR

    runs = []
    for algorithm in ("fedavg", "fedsgd"):
        job = ["experiment=mcmahan2017_shakespeare", f"+experiment/mcmahan2017_algorithm={algorithm}", "seed=0"]
        with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
            cfg = compose(config_name="config", overrides=job, return_hydra_config=True)
        choices = dict(cfg.hydra.runtime.choices)
        del cfg.hydra
        params = store.run_params(schema.flat_config(cfg), choices)
        runs.append(report.ChildRun(algorithm, "", {k: str(v) for k, v in params.items()}, {0: 1.0}, {0: 0.1}))
    fedavg, fedsgd = (r.params for r in runs)
    assert fedavg["optimizer"] == "sgd" and fedavg["optimizer.learning_rate"] == "1.0"
    assert not [k for k in fedsgd if k.split(".")[0] in ("optimizer", "schedule")], fedsgd
    assert fedsgd["server_optimizer.learning_rate"] == "1.0"  # the step FedSGD does take
    assert list(report.group_runs(runs)) == [
        "algorithm=fedavg · experiment/mcmahan2017_algorithm=fedavg · optimizer=sgd · schedule=constant",
        "algorithm=fedsgd · experiment/mcmahan2017_algorithm=fedsgd · optimizer=<absent> · schedule=<absent>",
    ]
    swept = ["experiment/mcmahan2017_algorithm", "partition", "seed"]  # the protocol's sweep: only what it varies
    assert list(report.group_runs(runs, swept)) == [
        "experiment/mcmahan2017_algorithm=fedavg",
        "experiment/mcmahan2017_algorithm=fedsgd",
    ]
