"""Which runs a `resume=` may continue: a run started by fedlm before options became structured configs is refused,
saying why and what to do."""

from __future__ import annotations

import pytest

from fedlm.errors import ConfigError
from fedlm.fl.checkpoint import RunDirectory
from fedlm.tracking import resume


def test_a_run_of_the_old_layout_is_refused_with_the_reason(tmp_path):
    directory = RunDirectory(tmp_path)
    saved = {"aggregator.name": "mean", "aggregator.noise_multiplier": 1.0, "client_weighting": "num_examples"}
    with pytest.raises(
        ConfigError,
        match=r"resume='x': .* older fedlm whose config has aggregator.name.*"
        r"git checkout 9972261",
    ):
        resume.check_same_layout("'x'", directory, saved)
    resume.check_same_layout("'x'", directory, {"aggregator._target_": "fedlm.fl.aggregators.mean"})  # today's


@pytest.mark.parametrize("name, content", [("config.yaml", "rounds: [unclosed"), ("mlflow_run.json", '{"run_i')])
def test_an_unreadable_run_record_names_its_file(tmp_path, name, content):
    directory = RunDirectory(tmp_path)
    directory.checkpoints.mkdir()
    (directory.checkpoints / name).write_text(content)
    read = directory.config if name == "config.yaml" else directory.run_id
    with pytest.raises(ConfigError, match=f"{directory.checkpoints / name}: unreadable"):
        read()
