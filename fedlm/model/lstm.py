"""A faster CPU LSTM for training: the weights of `tf.keras.layers.LSTM`, a custom gradient (FastGRU's counterpart).

Why: as for the GRU (fedlm/model/gru.py), Keras's LSTM on a CPU projects the inputs inside its per-timestep loop,
and its autodiff gradient accumulates the weight gradients with small per-timestep matmuls. Here the input
projection is one large matmul over all timesteps; the backward loop (backwards in time) carries only dh and dc,
the gradients w.r.t. each step's output and cell state: every gate pre-activation gradient is dc or dh times a
factor known from the forward pass, so a step costs one matmul with the transposed recurrent kernel; dW, dU, db
and dx are then single large matmuls over all timesteps.
"""

from __future__ import annotations

import tensorflow as tf
from keras.src import backend as keras_backend  # Keras 2.14, as pinned by TF 2.14


def _lstm_sequence(
    x: tf.Tensor, kernel: tf.Tensor, recurrent_kernel: tf.Tensor, bias: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """All outputs [B, T, H] and the last cell state [B, H] of a zero-initialised LSTM over x [B, T, I] (Keras gate
    order i, f, c, o; Keras's `standard_lstm`: c = f * c' + i * tanh(z_c), h = o * tanh(c))."""

    @tf.custom_gradient
    def run(x, kernel, recurrent_kernel, bias):
        units = recurrent_kernel.shape[0]  # static: keeps it out of the loops' carried values
        x_tm = tf.transpose(x, [1, 0, 2])  # time-major [T, B, I]
        steps, batch = tf.shape(x_tm)[0], tf.shape(x_tm)[1]
        flat_x = tf.reshape(x_tm, [steps * batch, -1])
        xw = tf.reshape(tf.nn.bias_add(tf.matmul(flat_x, kernel), bias), [steps, batch, 4 * units])

        def step(t, h, c, saved):
            z = xw[t] + tf.matmul(h, recurrent_kernel)
            i, f, _, o = tf.split(tf.sigmoid(z), 4, axis=1)  # one sigmoid over all: cheaper than slicing out z_c
            g = tf.tanh(z[:, 2 * units : 3 * units])
            c = f * c + i * g
            tanh_c = tf.tanh(c)
            h = o * tanh_c
            return t + 1, h, c, saved.write(t, tf.stack([h, c, i, f, g, o, tanh_c]))

        zeros = tf.zeros([batch, units], x.dtype)
        loop_vars = [0, zeros, zeros, tf.TensorArray(x.dtype, size=steps)]
        _, _, c_last, saved = tf.while_loop(lambda t, *_: t < steps, step, loop_vars)
        hs, cs, i, f, g, o, tanh_c = tf.unstack(saved.stack(), axis=1)  # each [T, B, H]

        def grad(d_out, d_c_last):
            # dc_t = dc_{t+1} * f_{t+1} + dh_t * o_t (1 - tanh^2 c_t); d(gates) = [dc, dc, dc, dh] * q, q from the
            # forward pass (q_i = g i (1 - i), q_f = c_{t-1} f (1 - f), q_c = i (1 - g^2), q_o = tanh c_t o (1 - o)).
            h_prev = tf.concat([zeros[None], hs[:-1]], axis=0)
            c_prev = tf.concat([zeros[None], cs[:-1]], axis=0)
            q = tf.stack([g * i * (1.0 - i), c_prev * f * (1.0 - f), i * (1.0 - g * g), tanh_c * o * (1.0 - o)], 2)
            dc_dh = o * (1.0 - tanh_c * tanh_c)  # d c_t / d h_t through h = o tanh(c)
            per_step = tf.concat([tf.transpose(d_out, [1, 0, 2])[:, :, None], dc_dh[:, :, None], f[:, :, None], q], 2)
            recurrent_t = tf.transpose(recurrent_kernel)
            dc_end = tf.zeros_like(zeros) if d_c_last is None else d_c_last

            def back(t, dh_next, dc_next, dzs):
                d_out_t, dc_dh_t, f_t, q_t = tf.split(per_step[t], [1, 1, 1, 4], axis=1)
                dh = dh_next + d_out_t[:, 0]
                dc = dc_next + dh * dc_dh_t[:, 0]
                dz = tf.reshape(tf.stack([dc, dc, dc, dh], axis=1) * q_t, [-1, 4 * units])
                return t - 1, tf.matmul(dz, recurrent_t), dc * f_t[:, 0], dzs.write(t, dz)

            loop_vars = [steps - 1, tf.zeros_like(zeros), dc_end, tf.TensorArray(x.dtype, size=steps)]
            d_xw = tf.reshape(tf.while_loop(lambda t, *_: t >= 0, back, loop_vars)[3].stack(), [steps * batch, -1])
            d_x = tf.transpose(tf.reshape(tf.matmul(d_xw, kernel, transpose_b=True), [steps, batch, -1]), [1, 0, 2])
            d_kernel = tf.matmul(flat_x, d_xw, transpose_a=True)
            d_recurrent = tf.matmul(tf.reshape(h_prev, [steps * batch, units]), d_xw, transpose_a=True)
            return d_x, d_kernel, d_recurrent, tf.reduce_sum(d_xw, 0)

        return (tf.transpose(hs, [1, 0, 2]), c_last), grad

    return run(x, kernel, recurrent_kernel, bias)


@tf.keras.utils.register_keras_serializable(package="fedlm")
class FastLSTM(tf.keras.layers.LSTM):
    """`tf.keras.layers.LSTM` whose full-sequence training path is `_lstm_sequence`; same weights and config.

    A subclass, as FastGRU is of the GRU: the same `LSTMCell` variables (kernel [I,4H], recurrent_kernel [H,4H],
    bias [4H]), names and order, so weights and h5/SavedModel files move freely between it and the stock LSTM.
    The fast path covers the training configuration (the one Keras's own `standard_lstm` covers, without a mask):
    tanh/sigmoid, bias, no dropout, zero initial state, forward in time, not stateful, no mask. Anything else -- a
    mask, ragged input, `initial_state`, `stateful=True` (batch-1 generation) -- runs the stock implementation.
    """

    def __init__(self, units: int, **kwargs):
        super().__init__(units, **kwargs)
        cell = self.cell
        self._fast_config = (
            cell.activation is tf.keras.activations.tanh
            and cell.recurrent_activation is tf.keras.activations.sigmoid
            and cell.use_bias
            and not cell.dropout
            and not cell.recurrent_dropout
            and not (self.stateful or self.go_backwards or self.time_major or self.unroll)
        )

    def _init_set_name(self, name, zero_based=True):
        # Default names "lstm", "lstm_1", ... from the stock layer's counter, so variable names match it too.
        super()._init_set_name(name or keras_backend.unique_object_name("lstm", zero_based=zero_based))

    def build_from_config(self, config: dict) -> None:
        # .keras files hold the shape as a JSON list, which RNN.build would take for a list of input shapes.
        if config.get("input_shape") is not None:
            self.build(tuple(config["input_shape"]))

    def call(self, inputs, mask=None, training=None, initial_state=None):
        if (
            not self._fast_config
            or mask is not None
            or initial_state is not None
            or not isinstance(inputs, tf.Tensor)
            or inputs.dtype != self.cell.kernel.dtype
        ):
            return super().call(inputs, mask=mask, training=training, initial_state=initial_state)
        weights = [tf.convert_to_tensor(w) for w in (self.cell.kernel, self.cell.recurrent_kernel, self.cell.bias)]
        outputs, c_last = _lstm_sequence(inputs, *weights)  # tensors, not variables: the tape links them
        output = outputs if self.return_sequences else outputs[:, -1]
        return [output, outputs[:, -1], c_last] if self.return_state else output
