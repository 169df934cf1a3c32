"""Every `fedlm.*` MLflow tag, in one place: what fedlm writes on runs, and what it searches for; and the MLflow
tags fedlm sets for MLflow's UI."""

from __future__ import annotations

# MLflow's own: a run's, a logged model's or an experiment's description (Markdown), and the experiment's kind,
# which MLflow's UI otherwise guesses on every visit ("We've automatically detected the experiment type ...").
DESCRIPTION = "mlflow.note.content"
EXPERIMENT_KIND = "mlflow.experimentKind"
CUSTOM_MODEL_DEVELOPMENT = "custom_model_development"

GIT_COMMIT = "fedlm.git_commit"
OVERRIDES = "fedlm.overrides"  # a run's command-line overrides, space-separated
OVERRIDE_PREFIX = "override."  # one tag per override: override.optimizer = adam

RUN_DIR = "fedlm.run_dir"  # the run directory: its checkpoints and lock (resume=<run id> finds it here)
RESUMED_AFTER_ROUNDS = "fedlm.resumed_after_rounds"  # comma-separated: the checkpoint each resume started from
KERAS_MODEL = "fedlm.keras_model"  # the artifact path of the run's final Keras model file (fedlm.generate)
MODEL_INIT = "fedlm.model_init"  # the file the starting weights came from
MODEL_INIT_NOTES = "fedlm.model_init_notes"  # how they were adapted, if they were
PRIVACY_STOPPED_AFTER_ROUND = "fedlm.privacy_stopped_after_round"  # aggregator.target_epsilon ran out then
DATA_OOV_DISTINCT = "fedlm.data_oov_distinct"  # the characters of the federated text outside the vocabulary
CONFIG_PREFIX = "fedlm.config."  # + a machine-local config key (schema.MACHINE_KEYS): fedlm.config.cache_dir
STAT_PREFIX = "fedlm."  # + a constant of the run: fedlm.data_clients, fedlm.eval_sequences, fedlm.random_guess_accuracy
RUN_NAME = "fedlm.run_name"  # on a logged model: the name of the run that trained it
ROUND = "fedlm.round"  # on a logged model: the round it is the server model of

SWEEP_DIR = "fedlm.sweep_dir"  # on a sweep's parent and children: the multirun directory that ties them
SWEEP_ROLE = "fedlm.sweep"  # "parent" on the parent run
SWEPT_KEYS = "fedlm.swept_keys"  # on the parent: space-separated keys that vary across the jobs
SWEEP_OVERRIDES = "fedlm.sweep_overrides"
SWEEPER = "fedlm.sweeper"
LAUNCHER = "fedlm.launcher"
SWEEP_BEST_RUN = "fedlm.sweep_best_run"  # on the parent, when the sweep is done: the child of lowest final eval loss
