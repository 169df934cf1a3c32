"""What Hydra cannot compose is one line naming the override, exit 2 (fedlm/conf/composition.py)."""

from __future__ import annotations

import subprocess

import pytest

from fedlm.conf import composition, schema
from fedlm.errors import ConfigError
from tests.conftest import ROOT, UV_RUN

schema.register()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["optimizer=nosuch"], r"^optimizer=nosuch: no such option; available: adafactor, adagrad, adam, .*yogi$"),
        (["rounds=x"], r"^rounds=x: Value 'x' of type 'str' could not be converted to Integer$"),
        (["rounds=[1"], r"^rounds=\[1: cannot be read as an override \(no viable alternative at input '\[1'\)"),
        (["model.nosuch=1"], r"^model\.nosuch=1: Key 'nosuch' not in 'ModelConfig'$"),
        (["-m", "seed=0,1", "optimizer=adam,nosuch"], r"^optimizer=nosuch: no such option"),  # a swept value
        (["-m", "seed=range(2)", "rounds=x"], r"^rounds=x: "),
    ],
)
def test_what_hydra_cannot_compose_is_one_line_naming_the_override(argv, message):
    with pytest.raises(ConfigError, match=message) as raised:
        composition.check_command_line("config", argv)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
    "argv",
    [["optimizer=adam", "rounds=3"], ["-m", "optimizer=adam,sgd", "seed=range(3)"], ["--help"], ["--cfg", "job"]],
)
def test_what_composes_passes(argv):
    composition.check_command_line("config", argv)


def test_generate_is_checked_against_its_own_config():
    with pytest.raises(ConfigError, match=r"^temperature=x: Value 'x' of type 'str' could not be converted to Float$"):
        composition.check_command_line("generate", ["temperature=x"])


@pytest.mark.e2e
def test_a_missing_option_through_uv_run_is_one_line_and_exit_2():
    proc = subprocess.run(
        [*UV_RUN, "-m", "fedlm.run", "optimizer=nosuch"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "fedlm: config error: optimizer=nosuch: no such option; available: "
        + ", ".join(sorted(p.stem for p in (ROOT / "conf" / "optimizer").glob("*.yaml")))
    ]


def test_a_generate_prompt_with_a_comma_is_checked_as_the_command_reads_it():
    from fedlm.generate import quote_free_text

    argv = quote_free_text(["fedlm.generate", "prompt=What of TensorFlow Federated, you ask? "])
    composition.check_command_line("generate", argv[1:])  # Hydra alone would read `a, b` as a sweep: ambiguous
