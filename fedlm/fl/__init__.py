"""The federated-learning layer: everything TFF -- the learning process and its options (client weighting,
aggregators, algorithms, client sampling, evaluation), the round loop, checkpoints, and the TFF worker's lifetime."""
