"""`eval=`: the Keras and the federated evaluation of the same clients measure the same characters."""

from __future__ import annotations

import numpy as np

from fedlm.model import char_rnn


def test_federated_evaluation_measures_what_keras_evaluation_measures():
    """eval=federated (build_fed_eval over per-client datasets) vs the Keras evaluation of the same clients:
    the per-character metrics and counts agree; the loss (a mean of per-batch means) may not, and is not compared.
    Both measure each client on its own as a Keras evaluation of that client alone does."""
    from fedlm.data import client_data as client_data_lib
    from fedlm.data.preprocessing import clients_eval_dataset
    from fedlm.fl import evaluation, runtime
    from fedlm.fl import process as fl_process
    from fedlm.model.metrics import compile_for_eval

    texts = [
        "Now is the winter of our discontent",
        "Made glorious summer by this sun of York; é",
        "And all the clouds that lour'd upon our house\nIn the deep bosom of the ocean buried.",
    ]
    test_data = client_data_lib.to_client_data({f"C{i}": [t, t[::-1]] for i, t in enumerate(texts)})
    ids = [f"C{i}" for i in range(len(texts))]
    seq_length, batch = 10, 3
    clients = evaluation.EvalClients(test_data, ids, seq_length, batch)

    def keras_model():
        return char_rnn.build_model(4, 8)

    with runtime.tff_context():
        import tensorflow_federated as tff

        model_fn = fl_process.build_model_fn(keras_model, seq_length)
        # Any learning process holding server weights will do; build_fed_eval's is the cheapest to build.
        process = tff.learning.algorithms.build_fed_eval(model_fn)
        state = process.initialize()
        by_keras, by_clients = (
            ev.evaluate(state, ev.data)
            for ev in (
                build(process=process, model_fn=model_fn, keras_model_fn=keras_model, clients=clients)
                for build in (evaluation.keras, evaluation.federated)
            )
        )
        # Each client alone, by a plain compiled Keras model: what the per-client figures must be.
        alone = compile_for_eval(keras_model())
        process.get_model_weights(state).assign_weights_to(alone)
        expected = [
            alone.evaluate(clients_eval_dataset(test_data, [cid], seq_length, batch), verbose=0, return_dict=True)
            for cid in ids
        ]
    for key in ("accuracy", "cross_entropy", "oov_rate", "num_tokens"):
        np.testing.assert_allclose(by_clients[key], by_keras[key], rtol=1e-5, err_msg=key)
    assert by_clients["num_clients"] == 3 and by_keras["oov_rate"] > 0
    for per_client in (by_keras[evaluation.PER_CLIENT], by_clients[evaluation.PER_CLIENT]):
        assert per_client.client_ids == tuple(ids)
        np.testing.assert_allclose(per_client.tokens, [e["num_tokens"] for e in expected], rtol=1e-6)
        np.testing.assert_allclose(per_client.accuracy, [e["accuracy"] for e in expected], rtol=1e-5)
        np.testing.assert_allclose(per_client.loss, [e["cross_entropy"] for e in expected], rtol=1e-5)
