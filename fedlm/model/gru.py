"""A faster CPU GRU for training: the weights of `tf.keras.layers.GRU(reset_after=True)`, a custom gradient.

Why: on CPU, Keras's GRU projects the inputs inside its per-timestep loop, and its autodiff gradient does all
the weight-gradient work in small per-timestep matmuls too. Here the input projection is one large matmul over
all timesteps; the backward loop (backwards in time) carries only dh, the gradient w.r.t. each step's output,
because every gate pre-activation gradient is dh times a factor known from the forward pass; and dW, dU, db
and dx are then single large matmuls. No XLA: `jit_compile` is several times slower for this model on CPU.
"""

from __future__ import annotations

import tensorflow as tf
from keras.src import backend as keras_backend  # Keras 2.14, as pinned by TF 2.14


def _gru_sequence(x: tf.Tensor, kernel: tf.Tensor, recurrent_kernel: tf.Tensor, bias: tf.Tensor) -> tf.Tensor:
    """All outputs [B, T, H] of a zero-initialised GRU over x [B, T, I] (Keras gate order z, r, h; reset_after)."""

    @tf.custom_gradient
    def run(x, kernel, recurrent_kernel, bias):
        units = recurrent_kernel.shape[0]  # static: keeps it out of the loops' carried values
        x_tm = tf.transpose(x, [1, 0, 2])  # time-major [T, B, I]
        steps, batch = tf.shape(x_tm)[0], tf.shape(x_tm)[1]
        flat_x = tf.reshape(x_tm, [steps * batch, -1])
        xw = tf.reshape(tf.nn.bias_add(tf.matmul(flat_x, kernel), bias[0]), [steps, batch, 3 * units])
        b_rec = bias[1]

        def step(t, h, saved):
            x_zr, x_h = tf.split(xw[t], [2 * units, units], axis=1)
            u_zr, u_h = tf.split(tf.nn.bias_add(tf.matmul(h, recurrent_kernel), b_rec), [2 * units, units], axis=1)
            z, r = tf.split(tf.sigmoid(x_zr + u_zr), 2, axis=1)
            hh = tf.tanh(x_h + r * u_h)
            h = hh + z * (h - hh)  # = z * h + (1 - z) * hh
            return t + 1, h, saved.write(t, tf.stack([h, z, r, hh, u_h]))

        h0 = tf.zeros([batch, units], x.dtype)
        saved = tf.while_loop(lambda t, *_: t < steps, step, [0, h0, tf.TensorArray(x.dtype, size=steps)])[2]
        hs, z, r, hh, u_h = tf.unstack(saved.stack(), axis=1)  # each [T, B, H]

        def grad(d_out):
            # d(h@U + b_rec) = dh * q and d(x@W + b_in) = dh * [q_z, q_r, d_cand], with q from the forward pass.
            h_prev = tf.concat([h0[None], hs[:-1]], axis=0)
            d_cand = (1.0 - z) * (1.0 - hh * hh)  # d(candidate pre-activation) / dh
            q = tf.stack([(h_prev - hh) * z * (1.0 - z), d_cand * u_h * r * (1.0 - r), d_cand * r], axis=2)
            per_step = tf.concat([tf.transpose(d_out, [1, 0, 2])[:, :, None], z[:, :, None], q], axis=2)
            recurrent_t = tf.transpose(recurrent_kernel)

            def back(t, dh_next, dhs):
                d_out_t, z_t, q_t = tf.split(per_step[t], [1, 1, 3], axis=1)
                dh = dh_next + d_out_t[:, 0]
                d_hu = tf.reshape(dh[:, None] * q_t, [-1, 3 * units])
                return t - 1, dh * z_t[:, 0] + tf.matmul(d_hu, recurrent_t), dhs.write(t, dh)

            loop_vars = [steps - 1, tf.zeros_like(h0), tf.TensorArray(x.dtype, size=steps)]
            dhs = tf.while_loop(lambda t, *_: t >= 0, back, loop_vars)[2].stack()  # [T, B, H]
            d_hu = tf.reshape(dhs[:, :, None] * q, [steps * batch, 3 * units])
            d_xw = tf.concat([d_hu[:, : 2 * units], tf.reshape(dhs * d_cand, [steps * batch, units])], axis=1)
            d_x = tf.transpose(tf.reshape(tf.matmul(d_xw, kernel, transpose_b=True), [steps, batch, -1]), [1, 0, 2])
            d_kernel = tf.matmul(flat_x, d_xw, transpose_a=True)
            d_recurrent = tf.matmul(tf.reshape(h_prev, [steps * batch, units]), d_hu, transpose_a=True)
            d_bias = tf.stack([tf.reduce_sum(d_xw, 0), tf.reduce_sum(d_hu, 0)])
            return d_x, d_kernel, d_recurrent, d_bias

        return tf.transpose(hs, [1, 0, 2]), grad

    return run(x, kernel, recurrent_kernel, bias)


@tf.keras.utils.register_keras_serializable(package="fedlm")
class FastGRU(tf.keras.layers.GRU):
    """`tf.keras.layers.GRU` whose full-sequence training path is `_gru_sequence`; same weights and config.

    Being a subclass, it owns the same `GRUCell` variables (kernel [I,3H], recurrent_kernel [H,3H], bias [2,3H]),
    same names and order, so `get_weights`/`set_weights` and h5/SavedModel weight files move freely between it
    and the stock GRU (.keras weight files key layers by class name: go through `load_model` + `get_weights`).
    The fast path covers the training configuration: tanh/sigmoid, bias, reset_after, no dropout, zero initial
    state, forward in time, not stateful, no mask. Anything else -- a Keras mask, ragged input, `initial_state`,
    `stateful=True` (batch-1 generation) -- is delegated to the stock implementation, which honors it: a mask
    works, only not fast. This project pads only at sequence ends and masks the loss, so training has no mask.
    """

    def __init__(self, units: int, **kwargs):
        super().__init__(units, **kwargs)
        cell = self.cell
        self._fast_config = (
            cell.activation is tf.keras.activations.tanh
            and cell.recurrent_activation is tf.keras.activations.sigmoid
            and cell.use_bias
            and cell.reset_after
            and not cell.dropout
            and not cell.recurrent_dropout
            and not (self.stateful or self.go_backwards or self.time_major or self.unroll)
        )

    def _init_set_name(self, name, zero_based=True):
        # Default names "gru", "gru_1", ... from the stock layer's counter, so variable names match it too.
        super()._init_set_name(name or keras_backend.unique_object_name("gru", zero_based=zero_based))

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
        outputs = _gru_sequence(inputs, *weights)  # tensors, not variables: the tape links them to the variables
        output = outputs if self.return_sequences else outputs[:, -1]
        return [output, outputs[:, -1]] if self.return_state else output
