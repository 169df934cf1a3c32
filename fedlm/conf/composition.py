"""Hydra's own errors in reading the command line, as fedlm's one line and exit 2.

Hydra composes the config before fedlm's code runs, and reports what it cannot compose (an option that does not
exist, a value of the wrong type, an override it cannot parse) in several lines ending with a hint about
HYDRA_FULL_ERROR, with exit code 1 -- the code of a failed run. So each command first composes its config itself
with Hydra's Compose API (~0.3 s; in a multirun once per swept value), and turns what fails into a ConfigError.
Light: Hydra and OmegaConf only.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra._internal.utils import get_args_parser  # Hydra's own command-line grammar, so the flags match
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf.errors import OmegaConfBaseException

from fedlm.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parents[2] / "conf"

# Flags after which Hydra does not run the task (it prints help or the config): nothing to check.
_NOT_A_RUN = ("help", "hydra_help", "cfg", "info", "shell_completion", "resolve")


def check_command_line(config_name: str, argv: Sequence[str]) -> None:
    """Compose `config_name` with the command line's overrides as Hydra will; a ConfigError (one line naming the
    override, the value and what is allowed) for what Hydra cannot compose. In a multirun (`-m`), each swept value
    is composed once, with the first value of the other swept keys."""
    args, _ = get_args_parser().parse_known_args(list(argv))
    if any(getattr(args, flag, None) for flag in _NOT_A_RUN) or args.config_dir or args.config_path:
        return  # another config directory, or no run: Hydra's own handling
    config_name = args.config_name or config_name
    for overrides in _compositions(args.overrides, multirun=args.multirun):
        try:
            with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
                compose(config_name=config_name, overrides=overrides)
        except (HydraException, OmegaConfBaseException) as e:
            raise ConfigError(describe(e)) from None


def _compositions(overrides: list[str], multirun: bool) -> list[list[str]]:
    """The override lists to compose: the command line's; in a multirun, one per swept value."""
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException as e:
        raise ConfigError(describe(e)) from None
    if not multirun or not any(o.is_sweep_override() for o in parsed):
        # Hydra's sweepers read `a=1,2` only in a multirun; without -m it is a (wrong) single value
        return [overrides]
    first = [_with_value(o, next(iter(_values(o)))) for o in parsed]
    compositions = []
    for i, override in enumerate(parsed):
        if override.is_sweep_override():
            compositions += [first[:i] + [_with_value(override, v)] + first[i + 1 :] for v in _values(override)]
    return compositions


def _values(override) -> list[str]:
    if override.is_discrete_sweep():
        return list(override.sweep_string_iterator())
    return [override.get_value_element_as_str()]  # a single value, or an interval (Optuna's): its sweeper checks it


def _with_value(override, value: str) -> str:
    if not override.is_sweep_override() or not override.is_discrete_sweep():
        return override.input_line
    return f"{override.get_key_element()}={value}"


def exit_on_bad_command_line(config_name: str, argv: Sequence[str]) -> None:
    """check_command_line, and for a ConfigError fedlm's line on stderr and exit code 2."""
    try:
        check_command_line(config_name, argv)
    except ConfigError as e:
        print(f"fedlm: config error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def describe(error: Exception) -> str:
    """Hydra's message on one line, led by the override it is about: `optimizer=nosuch: no such option;
    available: adam, sgd, …`, `rounds=x: Value 'x' of type 'str' could not be converted to Integer`."""
    if isinstance(error, MissingConfigException) and error.options is not None and error.missing_cfg_file:
        group, _, name = error.missing_cfg_file.rpartition("/")
        return f"{group}={name}: no such option; available: {', '.join(sorted(error.options))}"
    if isinstance(error, OverrideParseException):
        return f"{error.override}: cannot be read as an override ({error.message.splitlines()[0]}); see `--help`"
    cause = error.__cause__
    about = re.search(r"Error merging override\s+(\S+)|To append to your config use \+(\S+)", str(error))
    if isinstance(cause, OmegaConfBaseException) and about:
        return f"{about.group(1) or about.group(2)}: {cause.msg.splitlines()[0]}"
    text = str(error).split("\nConfig search path:")[0]
    if cause is not None and str(cause) not in text:
        text += f": {cause}"
    return _one_line(text)


def _one_line(text: str) -> str:
    return re.sub(r"\s*\n\s*", "; ", str(text).strip())
