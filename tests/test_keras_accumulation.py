"""kexue.keras.GradientAccumulation: large-batch equivalence, Keras's built-in, model.fit, saving, both backends.

The module runs under the backend Keras was imported with (tensorflow by default); the last test runs
the whole module again in a fresh process under the other backend, since a process has one backend.
"""

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras  # noqa: E402

from kexue.keras import GradientAccumulation  # noqa: E402
from tests.keras_backends import only_once, rerun_under_other_backend  # noqa: E402

BACKEND = keras.backend.backend()
RNG = np.random.default_rng(0)
X = RNG.standard_normal((320, 6)).astype("float32")
Y = RNG.integers(0, 3, 320)


def make_model(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((6,)), keras.layers.Dense(12, activation="tanh"), keras.layers.Dense(3)])


def fit(optimizer, batch_size, seed=0, epochs=1):
    model = make_model(seed)
    model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(X, Y, batch_size=batch_size, epochs=epochs, shuffle=False, verbose=0)
    return model


def diff(a, b):
    return max(float(np.abs(u - v).max()) for u, v in zip(a.get_weights(), b.get_weights()))


OPTIMIZERS = {
    "sgd": lambda **kw: keras.optimizers.SGD(0.1, **kw),
    "momentum": lambda **kw: keras.optimizers.SGD(0.1, momentum=0.9, **kw),
    "adam": lambda **kw: keras.optimizers.Adam(1e-2, **kw),
    "adamw": lambda **kw: keras.optimizers.AdamW(1e-2, weight_decay=0.1, **kw),
}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_matches_large_batches_and_the_builtin(name):
    big = fit(OPTIMIZERS[name](), batch_size=32)
    ours = fit(GradientAccumulation(OPTIMIZERS[name](), steps=4), batch_size=8)
    builtin = fit(OPTIMIZERS[name](gradient_accumulation_steps=4), batch_size=8)
    assert diff(big, make_model()) > 1e-2
    assert diff(big, ours) < 1e-5  # float32, 10 updates
    assert diff(builtin, ours) <= 1e-7  # the same additions in the same order
    assert int(ours.optimizer.iterations) == 10 and int(ours.optimizer.micro_steps) == 40


def test_schedules_count_updates():
    def schedule():
        return keras.optimizers.schedules.ExponentialDecay(1e-2, decay_steps=1, decay_rate=0.8)

    big = fit(keras.optimizers.Adam(schedule()), batch_size=32)
    ours = fit(GradientAccumulation(keras.optimizers.Adam(schedule()), steps=4), batch_size=8)
    assert diff(big, ours) < 1e-5
    assert float(ours.optimizer.learning_rate) == pytest.approx(1e-2 * 0.8**10, rel=1e-5)


def test_steps_one_is_plain_training():
    plain = fit(keras.optimizers.Adam(1e-2), batch_size=16)
    ours = fit(GradientAccumulation(keras.optimizers.Adam(1e-2), steps=1), batch_size=16)
    assert diff(plain, ours) < 1e-6


def test_save_and_load_mid_cycle(tmp_path):
    model = make_model()
    model.compile(optimizer=GradientAccumulation(keras.optimizers.Adam(1e-2), 4),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(X[:72], Y[:72], batch_size=8, shuffle=False, verbose=0)  # 9 micro-batches: 1 into a cycle
    model.save(tmp_path / "model.keras")
    restored = keras.models.load_model(tmp_path / "model.keras")
    assert isinstance(restored.optimizer, GradientAccumulation) and restored.optimizer.steps == 4
    assert isinstance(restored.optimizer.inner_optimizer, keras.optimizers.Adam)
    saved = [np.array(v) for v in model.optimizer.variables]
    loaded = [np.array(v) for v in restored.optimizer.variables]
    assert len(saved) == len(loaded) and all(np.array_equal(a, b) for a, b in zip(saved, loaded))
    assert int(restored.optimizer.micro_steps) == 9 and int(restored.optimizer.iterations) == 2
    for m in (model, restored):
        m.fit(X[72:], Y[72:], batch_size=8, shuffle=False, verbose=0)
    assert diff(model, restored) == 0.0


def test_config_round_trip():
    opt = GradientAccumulation(keras.optimizers.SGD(0.05, momentum=0.5), steps=3, name="acc")
    clone = GradientAccumulation.from_config(opt.get_config())
    assert clone.steps == 3 and clone.name == "acc"
    assert clone.inner_optimizer.get_config() == opt.inner_optimizer.get_config()


def test_bad_arguments():
    with pytest.raises(TypeError, match="`optimizer` must be a keras.optimizers.Optimizer"):
        GradientAccumulation("adam", 2)
    with pytest.raises(ValueError, match="already accumulates"):
        GradientAccumulation(keras.optimizers.Adam(gradient_accumulation_steps=2), 2)
    for steps, error in ((0, ValueError), (2.5, TypeError), (True, TypeError)):
        with pytest.raises(error, match="`steps`"):
            GradientAccumulation(keras.optimizers.Adam(), steps)
    with pytest.raises(ValueError, match="set them on `optimizer`"):
        GradientAccumulation(keras.optimizers.Adam(), 2, clipnorm=1.0)


def test_lookahead_inside_the_accumulation_counts_updates():
    """GradientAccumulation(Lookahead(...)) is the big-batch Lookahead; the other order is refused."""
    from kexue.keras import Lookahead

    big = fit(Lookahead(keras.optimizers.Adam(1e-2), sync_period=3), batch_size=32)
    ours = fit(GradientAccumulation(Lookahead(keras.optimizers.Adam(1e-2), sync_period=3), steps=4), batch_size=8)
    assert int(ours.optimizer.iterations) == 10  # the inner Adam's updates, as with batches of 32
    assert diff(big, ours) < 1e-5
    with pytest.raises(ValueError, match="outermost"):
        Lookahead(GradientAccumulation(keras.optimizers.Adam(1e-2), steps=4))


@only_once
def test_the_other_backend():
    rerun_under_other_backend(__file__, BACKEND)
