#!/usr/bin/env python3
"""Independent reference for the four networks: builds ARCH-1..4 with Keras 3
(JAX backend) layer by layer from the paper's Tables 1-4, fills them with fixed,
formula-generated weights, and writes golden outputs for `models/tests/parity.rs`.

The weights are not stored: both sides generate them from the same integer
formula (see `fixture_values`), so the golden files stay small. Each file holds:
Keras' own parameter counts, eval-mode and train-mode logits for a fixed batch,
the BatchNorm moving statistics after one train-mode forward pass, and for every
trainable tensor a sample of the gradient of the mean cross-entropy loss.

Usage (one-off; the outputs are committed):
    python3 -m venv tools/.venv
    tools/.venv/bin/pip install "keras==3.15.*" "jax[cpu]==0.10.*" numpy
    KERAS_BACKEND=jax tools/.venv/bin/python tools/parity_reference.py models/tests/golden
"""
import json
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import layers  # noqa: E402

BATCH = 4
LABELS = [0, 3, 5, 6]
SAMPLES = 48


def name_seed(name):
    return sum((j + 1) * ord(c) for j, c in enumerate(name)) % 1_000_003


def fixture_values(name, n):
    """v_i in [-0.5, 0.5), exact in float32, identical in the Rust test: the low
    16 bits of murmur3's 32-bit finaliser applied to i + seed * golden ratio."""
    m = np.uint64(0xFFFFFFFF)
    seed = np.uint64(name_seed(name))
    h = (np.arange(n, dtype=np.uint64) + seed * np.uint64(0x9E3779B9)) & m
    h ^= h >> np.uint64(16)
    h = (h * np.uint64(0x85EBCA6B)) & m
    h ^= h >> np.uint64(13)
    h = (h * np.uint64(0xC2B2AE35)) & m
    h ^= h >> np.uint64(16)
    k = h & np.uint64(0xFFFF)
    return k.astype(np.float32) / np.float32(65536.0) - np.float32(0.5)


def fixture_tensor(name, shape):
    """A parameter in candle's layout (see models/tests/parity.rs)."""
    n = int(np.prod(shape))
    v = fixture_values(name, n)
    param = name.rsplit(".", 1)[1]
    if param == "weight":
        fan_in = int(np.prod(shape[1:]))
        s = np.float32(np.sqrt(24.0 / fan_in))
        out = v * s
    elif param in ("bias", "beta", "moving_mean"):
        out = np.float32(0.2) * v
    elif param == "gamma":
        out = np.float32(1.0) + np.float32(0.4) * v
    elif param == "moving_variance":
        out = np.float32(1.0) + v
    else:
        raise ValueError(name)
    return out.reshape(shape)


class Builder:
    """Creates Keras layers and records how their weights map to candle names."""

    def __init__(self):
        self.mapping = []  # (keras layer name, [(candle name, candle shape, to_keras)])

    def conv(self, x, name, c_out, k, stride=1, bias=False):
        c_in = x.shape[-1]
        y = layers.Conv2D(c_out, k, strides=stride, padding="same", use_bias=bias, name=name)(x)
        params = [(f"{name}.weight", (c_out, c_in, k, k), lambda w: w.transpose(2, 3, 1, 0))]
        if bias:
            params.append((f"{name}.bias", (c_out,), lambda w: w))
        self.mapping.append((name, params))
        return y

    def sep(self, x, name, c_out):
        c_in = x.shape[-1]
        y = layers.SeparableConv2D(c_out, 3, padding="same", use_bias=False, name=name)(x)
        self.mapping.append((name, [
            (f"{name}.depthwise.weight", (c_in, 1, 3, 3), lambda w: w.transpose(2, 3, 0, 1)),
            (f"{name}.pointwise.weight", (c_out, c_in, 1, 1), lambda w: w.transpose(2, 3, 1, 0)),
        ]))
        return y

    def bn(self, x, name):
        c = x.shape[-1]
        y = layers.BatchNormalization(momentum=0.99, epsilon=1e-3, name=name)(x)
        self.mapping.append((name, [(f"{name}.{p}", (c,), lambda w: w)
                                    for p in ("gamma", "beta", "moving_mean", "moving_variance")]))
        return y

    def dense(self, x, name, units, activation=None):
        c_in = x.shape[-1]
        y = layers.Dense(units, activation=activation, name=name)(x)
        self.mapping.append((name, [
            (f"{name}.weight", (units, c_in), lambda w: w.T),
            (f"{name}.bias", (units,), lambda w: w),
        ]))
        return y


def relu(x, name):
    return layers.Activation("relu", name=name)(x)


def pool(x, name):
    return layers.MaxPooling2D(2, name=name)(x)


def separable_body(b, x):
    """Table 1 up to activation_10."""
    y = x
    for i, (c, bn) in enumerate([(8, "batch_normalization"), (8, "batch_normalization_1"),
                                 (16, "batch_normalization_2")]):
        y = relu(b.bn(b.conv(y, "conv2d" if i == 0 else f"conv2d_{i}", c, 3), bn),
                 "activation" if i == 0 else f"activation_{i}")
    y = b.bn(b.conv(y, "conv2d_3", 16, 3), "batch_normalization_3")
    trunk = relu(pool(y, "max_pooling2d"), "activation_3")
    main = relu(b.bn(b.sep(trunk, "separable_conv2d", 32), "batch_normalization_6"), "activation_4")
    main = b.bn(b.sep(main, "separable_conv2d_1", 32), "batch_normalization_7")
    main = relu(pool(main, "max_pooling2d_1"), "activation_5")
    res = b.bn(b.conv(trunk, "conv2d_4", 16, 1), "batch_normalization_4")
    res = b.bn(b.conv(res, "conv2d_5", 32, 1, stride=2), "batch_normalization_5")
    y = relu(layers.Add(name="add")([main, res]), "activation_6")
    y = relu(b.bn(b.conv(y, "conv2d_6", 64, 3, bias=True), "batch_normalization_8"), "activation_7")
    y = b.bn(b.conv(y, "conv2d_7", 64, 3, bias=True), "batch_normalization_9")
    y = relu(pool(y, "max_pooling2d_2"), "activation_8")
    y = relu(b.bn(b.conv(y, "conv2d_8", 128, 3, bias=True), "batch_normalization_10"), "activation_9")
    y = relu(b.bn(b.conv(y, "conv2d_9", 128, 3, bias=True), "batch_normalization_11"), "activation_10")
    return y


def plain_body(b, x):
    """Table 3 up to activation_10."""
    y = x
    pools = 0
    for i, c in enumerate([8, 8, 16, 16, 16, 32, 32, 64, 64, 128, 128]):
        suffix = "" if i == 0 else f"_{i}"
        y = b.bn(b.conv(y, f"conv2d{suffix}", c, 3), f"batch_normalization{suffix}")
        if i in (4, 6, 8):
            y = pool(y, "max_pooling2d" if pools == 0 else f"max_pooling2d_{pools}")
            pools += 1
        y = relu(y, f"activation{suffix}")
    return y


def gap_head(b, x, conv_name):
    """Logits (the paper's softmax `predictions` is applied to these)."""
    y = b.conv(x, conv_name, 7, 3, bias=True)
    return layers.GlobalAveragePooling2D(name="global_average_pooling2d")(y)


def dense_head(b, x):
    y = layers.Flatten(name="flatten")(pool(x, "max_pooling2d_3"))
    y = b.dense(y, "dense", 512, "relu")
    y = b.dense(y, "dense_1", 512, "relu")
    return b.dense(y, "prediction", 7)


def build(arch):
    b = Builder()
    x = keras.Input((48, 48, 1), name="input_1")
    body = separable_body if arch in ("arch1", "arch2") else plain_body
    y = body(b, x)
    if arch in ("arch1", "arch3"):
        y = gap_head(b, y, "conv2d_10" if arch == "arch1" else "conv2d_11")
    else:
        y = dense_head(b, y)
    return keras.Model(x, y, name=arch), b.mapping


def main(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    x_nchw = (fixture_values("input", BATCH * 48 * 48) + np.float32(0.5)).reshape(BATCH, 1, 48, 48)
    x = jnp.asarray(x_nchw.transpose(0, 2, 3, 1))
    labels = jnp.asarray(LABELS)
    for arch in ("arch1", "arch2", "arch3", "arch4"):
        model, mapping = build(arch)
        to_candle = {}
        for lname, params in mapping:
            weights = []
            for cname, cshape, to_keras in params:
                weights.append(to_keras(fixture_tensor(cname, cshape)))
            model.get_layer(lname).set_weights(weights)
            for (cname, cshape, to_keras), var in zip(params, model.get_layer(lname).weights):
                to_candle[var.path] = (cname, cshape, to_keras)

        def from_keras(path, value):
            cname, cshape, to_keras = to_candle[path]
            # Invert the layout change by applying it to an index array.
            idx = np.arange(int(np.prod(cshape))).reshape(cshape)
            perm = to_keras(idx)
            out = np.empty(int(np.prod(cshape)), dtype=np.float64)
            out[perm.reshape(-1)] = np.asarray(value, dtype=np.float64).reshape(-1)
            return cname, out

        tv = [v.value for v in model.trainable_variables]
        ntv = [v.value for v in model.non_trainable_variables]
        eval_logits = model(x, training=False)

        def loss_fn(tv, ntv):
            logits, new_ntv = model.stateless_call(tv, ntv, x, training=True)
            logp = jax.nn.log_softmax(logits, axis=-1)
            loss = -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1))
            return loss, (logits, new_ntv)

        (loss, (train_logits, new_ntv)), grads = jax.value_and_grad(loss_fn, has_aux=True)(tv, ntv)

        moving = {}
        for var, value in zip(model.non_trainable_variables, new_ntv):
            cname, vals = from_keras(var.path, value)
            moving[cname] = vals.tolist()
        gradients = {}
        for var, g in zip(model.trainable_variables, grads):
            cname, vals = from_keras(var.path, g)
            n = vals.size
            idx = sorted({int(k * n / SAMPLES) for k in range(SAMPLES)} | {int(np.argmax(np.abs(vals)))})
            gradients[cname] = {
                "numel": n,
                "sum": float(vals.sum()),
                "sum_abs": float(np.abs(vals).sum()),
                "max_abs": float(np.abs(vals).max()),
                "samples": [[i, float(vals[i])] for i in idx],
            }
        trainable = int(sum(np.prod(v.shape) for v in model.trainable_variables))
        total = int(model.count_params())
        golden = {
            "arch": arch,
            "reference": f"keras {keras.__version__} (jax {jax.__version__} backend)",
            "keras_params": {"total": total, "trainable": trainable, "non_trainable": total - trainable},
            "batch": BATCH,
            "labels": LABELS,
            "eval_logits": np.asarray(eval_logits, dtype=np.float64).tolist(),
            "train_logits": np.asarray(train_logits, dtype=np.float64).tolist(),
            "train_loss": float(loss),
            "moving_after_train_step": moving,
            "gradients": gradients,
        }
        path = os.path.join(out_dir, f"{arch}.json")
        with open(path, "w") as f:
            json.dump(golden, f, separators=(",", ":"))
        print(f"{arch}: keras params total={total} trainable={trainable} loss={float(loss):.6f} -> {path}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "models/tests/golden")
