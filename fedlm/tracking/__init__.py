"""The tracking layer: everything MLflow -- where runs go, their names, params and tags, resume look-ups, sweep
parents and children, the per-round release managers, the final model and the figures."""
