"""Keras models of the ensemble, all functional (tf2onnx 1.17 cannot convert Keras 3 Sequential models).

Both CNNs take the per-coefficient *standardised* 40 x 87 MFCC matrix (see ``offline.train``) and output
one sigmoid unit = p(female) (``logit_model``: the same model without it, as exported). All are small
(parameter counts below; latency: models/MODEL_CARD.md and the README's benchmark).

Variants (``variant=``):

* ``cnn1d``
  * ``"baseline"``: the original study's 1D CNN on the flattened matrix (3480 x 1, coefficient-major):
    four Conv1D (16, 8, 16, 8 filters, kernel 6) each followed by 2x max-pooling, dense 256, sigmoid
    (437k parameters).
  * ``"regularised"``: the same convolutions, dropout 0.4 around a dense 64 layer, L2 1e-4 (111k).
  * ``"temporal"`` (release): Conv1D over time with the 40 coefficients as channels (48 filters, kernels
    5/5/3, batch-norm, two 2x pools), then mean and max over time, dropout, dense 32 (32k). Invariant to
    where in the window the voice sits.
* ``cnn2d``
  * ``"baseline"``: the study's 2D CNN on 40 x 87 x 1: Conv2D 16 k6 -> pool -> BN, Conv2D 16 k6 -> pool
    -> BN, Conv2D 8 k3 -> pool -> BN, dropout 0.3, dense 256, sigmoid (44k).
  * ``"regularised"``: same convolutions, dropout 0.4 around a dense 64 layer, L2 1e-4 (19k).
  * ``"timepool"`` (release): Conv2D 16 k5 / 16 k3 / 16 k3 with batch-norm and 2x2 pools, then the
    feature map is averaged over time (keeping the cepstral axis), dropout, dense 32 (8k).

The release variants were chosen on reader-disjoint cross-validation (models/MODEL_CARD.md, "Validation
used to choose the recipe").
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

N_MFCC, N_FRAMES = 40, 87
VARIANTS = {"cnn1d": ("baseline", "regularised", "temporal"), "cnn2d": ("baseline", "regularised", "timepool")}


def _keras():
    import keras

    return keras


def build_cnn1d(input_shape: tuple[int, int] = (N_MFCC, N_FRAMES), *, variant: str = "regularised",
                seed: int = 0):
    """1D CNN on the flattened MFCC matrix. Input (batch, n_mfcc, n_frames) float32 -> (batch, 1) p_female.

    The flattening happens inside the model (a Reshape), so every model of the bundle takes the same
    (N, 40, 87) matrix and the live engine feeds one buffer to both CNNs.
    """
    keras = _keras()
    from keras import layers

    if variant not in VARIANTS["cnn1d"]:
        raise ValueError(f"variant must be one of {VARIANTS['cnn1d']}, got {variant!r}")
    keras.utils.set_random_seed(seed)
    if variant == "temporal":
        return _cnn1d_temporal(input_shape)
    reg = keras.regularizers.L2(1e-4) if variant == "regularised" else None
    n = input_shape[0] * input_shape[1]
    inp = keras.Input(shape=input_shape, name="mfcc", dtype="float32")
    x = layers.Reshape((n, 1), name="flatten_3480x1")(inp)
    for i, filters in enumerate((16, 8, 16, 8)):
        x = layers.Conv1D(filters, 6, activation="relu", kernel_regularizer=reg, name=f"conv{i + 1}")(x)
        x = layers.MaxPooling1D(2, name=f"pool{i + 1}")(x)
    x = layers.Flatten(name="flatten")(x)
    if variant == "regularised":
        x = layers.Dropout(0.4, name="dropout_in")(x)
        x = layers.Dense(64, activation="relu", kernel_regularizer=reg, name="dense")(x)
        x = layers.Dropout(0.4, name="dropout_out")(x)
    else:
        x = layers.Dense(256, activation="relu", name="dense")(x)
    out = layers.Dense(1, activation="sigmoid", name="p_female")(x)
    return keras.Model(inp, out, name="cnn1d")


def build_cnn2d(input_shape: tuple[int, int] = (N_MFCC, N_FRAMES), *, variant: str = "regularised",
                seed: int = 0):
    """2D CNN on the MFCC matrix. Input (batch, n_mfcc, n_frames) float32 -> (batch, 1) p_female."""
    keras = _keras()
    from keras import layers

    if variant not in VARIANTS["cnn2d"]:
        raise ValueError(f"variant must be one of {VARIANTS['cnn2d']}, got {variant!r}")
    keras.utils.set_random_seed(seed)
    reg = keras.regularizers.L2(1e-4) if variant != "baseline" else None
    inp = keras.Input(shape=input_shape, name="mfcc", dtype="float32")
    x = layers.Reshape((*input_shape, 1), name="add_channel")(inp)
    if variant == "timepool":
        for i, (filters, k) in enumerate(((16, 5), (16, 3), (16, 3))):
            x = layers.Conv2D(filters, k, padding="same", use_bias=False, kernel_regularizer=reg, name=f"conv{i + 1}")(x)
            x = layers.BatchNormalization(name=f"bn{i + 1}")(x)
            x = layers.Activation("relu", name=f"relu{i + 1}")(x)
            x = layers.MaxPooling2D(2, name=f"pool{i + 1}")(x)
        # (5, 10, 16): average over time, keep the frequency (cepstral) axis
        x = layers.AveragePooling2D((1, int(x.shape[2])), name="time_mean")(x)
        x = layers.Flatten(name="flatten")(x)
        x = layers.Dropout(0.3, name="dropout")(x)
        x = layers.Dense(32, activation="relu", kernel_regularizer=reg, name="dense")(x)
        x = layers.Dropout(0.3, name="dropout_out")(x)
        out = layers.Dense(1, activation="sigmoid", name="p_female")(x)
        return keras.Model(inp, out, name="cnn2d")
    for i, (filters, k) in enumerate(((16, 6), (16, 6), (8, 3))):
        x = layers.Conv2D(filters, k, activation="relu", kernel_regularizer=reg, name=f"conv{i + 1}")(x)
        x = layers.MaxPooling2D(2, name=f"pool{i + 1}")(x)
        x = layers.BatchNormalization(name=f"bn{i + 1}")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dropout(0.3 if variant == "baseline" else 0.4, name="dropout")(x)
    x = layers.Dense(256 if variant == "baseline" else 64, activation="relu", kernel_regularizer=reg, name="dense")(x)
    if variant == "regularised":
        x = layers.Dropout(0.4, name="dropout_out")(x)
    out = layers.Dense(1, activation="sigmoid", name="p_female")(x)
    return keras.Model(inp, out, name="cnn2d")


def _cnn1d_temporal(input_shape):
    """1D convolutions over time with the MFCC coefficients as channels, then mean + max over time.

    Time-shift invariant by construction (a voice is a voice wherever it sits in the window) and
    ~20k parameters instead of the flattened design's ~440k.
    """
    keras = _keras()
    from keras import layers

    reg = keras.regularizers.L2(1e-4)
    inp = keras.Input(shape=input_shape, name="mfcc", dtype="float32")
    x = layers.Permute((2, 1), name="frames_first")(inp)  # (n_frames, n_mfcc)
    for i, (filters, k) in enumerate(((48, 5), (48, 5), (48, 3))):
        x = layers.Conv1D(filters, k, padding="same", use_bias=False, kernel_regularizer=reg, name=f"conv{i + 1}")(x)
        x = layers.BatchNormalization(name=f"bn{i + 1}")(x)
        x = layers.Activation("relu", name=f"relu{i + 1}")(x)
        if i < 2:
            x = layers.MaxPooling1D(2, name=f"pool{i + 1}")(x)
    x = layers.Concatenate(name="time_stats")([layers.GlobalAveragePooling1D(name="time_mean")(x),
                                               layers.GlobalMaxPooling1D(name="time_max")(x)])
    x = layers.Dropout(0.3, name="dropout")(x)
    x = layers.Dense(32, activation="relu", kernel_regularizer=reg, name="dense")(x)
    x = layers.Dropout(0.3, name="dropout_out")(x)
    out = layers.Dense(1, activation="sigmoid", name="p_female")(x)
    return keras.Model(inp, out, name="cnn1d")


BUILDERS = {"cnn1d": build_cnn1d, "cnn2d": build_cnn2d}


def logit_model(model):
    """The same Keras model with its final sigmoid (the ``p_female`` layer) replaced by the identity: it outputs
    the logit of p_female, as the bundle's ONNX files do. Shares the weights of ``model``."""
    keras = _keras()

    last = model.get_layer("p_female")
    dense = keras.layers.Dense(1, activation=None, name="logit")
    out = dense(last.input)
    dense.set_weights(last.get_weights())
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    return keras.Model(inputs, out, name=f"{model.name}_logit")


def keras_forward(model, x, batch_size: int = 512):
    """``model(x)`` in inference mode, batch by batch (eager: no tf.function retracing per new model)."""
    import numpy as np

    outs = [model(x[i:i + batch_size], training=False).numpy() for i in range(0, len(x), batch_size)]
    return np.concatenate(outs) if outs else np.zeros((0, 1), dtype=np.float32)
