"""`python -m fedlm.report [parent=<sweep parent run id>|latest] [report.target_accuracy=…] [report.confidence=…]`:
a sweep's child runs grouped by their config without `seed`, per group n, the final eval loss and accuracy with
confidence intervals and the rounds to a target accuracy, and Welch's t-tests between the groups (see
fedlm/tracking/report.py). Printed, and logged to the sweep's parent run: Markdown, CSV, the mean curves' PNG.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from fedlm.conf import composition, schema
from fedlm.conf.checks import check_bounds
from fedlm.errors import ConfigError


def validate(cfg: DictConfig) -> None:
    """Checks on `python -m fedlm.report`'s config that need nothing loaded."""
    check_bounds(cfg)  # the schema's ranges: target accuracy, confidence
    if not str(cfg.parent).strip():
        raise ConfigError(f"parent={cfg.parent!r}: give a sweep's parent run id, or latest")


def read(cfg: DictConfig):
    """The report of the sweep `cfg.parent` (a fedlm.tracking.report.Report), read from the store."""
    validate(cfg)
    from fedlm.tracking import report, store

    uri = store.open_existing(cfg.mlflow.tracking_uri)
    return report.read(
        str(cfg.parent),
        cfg.mlflow.experiment_name,
        uri,
        target=cfg.report.target_accuracy,
        confidence=cfg.report.confidence,
    )


@hydra.main(version_base="1.3", config_path="../conf", config_name="report")
def _main(cfg: DictConfig) -> None:
    try:
        result = read(cfg)
    except ConfigError as e:
        print(f"fedlm.report: config error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(result.text(), flush=True)
    from mlflow.exceptions import MlflowException

    from fedlm.tracking.report import log

    try:
        paths = log(result)
    except (MlflowException, OSError) as e:
        print(f"fedlm.report: error: could not log the report to run {result.parent_id}: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    print(f"\nLogged to the parent run {result.parent_id}: {', '.join(paths)}")


def main() -> None:
    schema.register()
    composition.exit_on_bad_command_line("report", sys.argv[1:])
    _main()


if __name__ == "__main__":
    main()
