"""kexue.keras.Lookahead and kexue.keras.LazyOptimizer: references, model.fit, saving, both backends.

As in test_keras_accumulation.py, the last test re-runs this module under the other Keras backend.
"""

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras  # noqa: E402
import torch  # noqa: E402

from kexue.keras import LazyOptimizer, Lookahead  # noqa: E402
from tests.keras_backends import only_once, rerun_under_other_backend  # noqa: E402
from kexue.lookahead import lookahead_sgd_reference  # noqa: E402
from kexue.torch import LazyAdam  # noqa: E402

BACKEND = keras.backend.backend()
RNG = np.random.default_rng(0)
IDS = RNG.integers(0, 40, size=(64, 12)).astype("int32")  # token ids 40..199 never occur
TARGET = RNG.standard_normal((64, 1)).astype("float32")
VOCAB = 200


def test_lookahead_matches_the_numpy_reference():
    a, b = RNG.standard_normal((30, 5)), RNG.standard_normal(30)
    w0 = RNG.standard_normal(5)
    theta_ref, _ = lookahead_sgd_reference(w0, lambda w, t: a.T @ (a @ w - b) / len(b), 0.05, 23, 4, 0.3)
    w = keras.Variable(w0.astype("float32"))
    opt = Lookahead(keras.optimizers.SGD(0.05), sync_period=4, slow_step_size=0.3)
    for _ in range(23):
        g = a.T @ (a @ np.array(w, dtype=np.float64) - b) / len(b)
        opt.apply([keras.ops.convert_to_tensor(g.astype("float32"))], [w])
    assert np.abs(np.array(w) - theta_ref).max() < 1e-6


@pytest.mark.filterwarnings("ignore:Gradients do not exist")
def test_lookahead_copies_every_variable_at_the_first_step():
    """A variable without a gradient at step 1 must not be pulled towards zero at the first sync."""
    a, b = keras.Variable([1.0]), keras.Variable([1.0])
    opt = Lookahead(keras.optimizers.SGD(0.0), sync_period=2, slow_step_size=0.5)
    opt.build([a, b])
    opt.apply([keras.ops.ones(1), None], [a, b])
    opt.apply([keras.ops.ones(1), keras.ops.ones(1)], [a, b])  # the first sync: lr = 0, nothing may move
    assert np.array(a)[0] == 1.0 and np.array(b)[0] == 1.0


def test_lookahead_slow_weights_swapped_in_and_at_the_end_of_fit():
    w = keras.Variable([0.0])
    opt = Lookahead(keras.optimizers.SGD(1.0), sync_period=4, slow_step_size=0.5)
    for _ in range(6):  # gradient -1: the fast weight climbs by 1 a step; sync after step 4: slow 0 -> 2
        opt.apply([keras.ops.convert_to_tensor([-1.0])], [w])
    assert np.array(w)[0] == 4.0 and np.array(opt.slow_weights()[0])[0] == 2.0
    with opt.swapped():
        assert np.array(w)[0] == 2.0
    assert np.array(w)[0] == 4.0

    x = RNG.standard_normal((56, 12)).astype("float32")
    y = RNG.standard_normal((56, 1)).astype("float32")
    for at_end in (True, False):
        model = dense_model()
        model.compile(optimizer=Lookahead(keras.optimizers.Adam(1e-2), 5, 0.5, slow_weights_at_end=at_end), loss="mse")
        model.fit(x, y, batch_size=8, shuffle=False, verbose=0)  # 7 inner steps: fast and slow differ
        slow = [np.array(s) for s in model.optimizer.slow_weights()]
        fast = [np.array(v) for v in model.trainable_weights]
        gap = max(np.abs(a - b).max() for a, b in zip(slow, fast))
        assert gap == 0.0 if at_end else gap > 1e-4


def dense_model(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((12,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(1)])


def test_lookahead_in_fit_save_and_resume(tmp_path):
    x = RNG.standard_normal((96, 12)).astype("float32")
    y = RNG.standard_normal((96, 1)).astype("float32")
    model = dense_model()
    model.compile(optimizer=Lookahead(keras.optimizers.Adam(1e-2), 5, 0.5), loss="mse")
    model.fit(x[:56], y[:56], batch_size=8, shuffle=False, verbose=0)  # 7 inner steps: 2 past a sync
    model.save(tmp_path / "m.keras")
    restored = keras.models.load_model(tmp_path / "m.keras")
    assert isinstance(restored.optimizer, Lookahead) and restored.optimizer.sync_period == 5
    for m in (model, restored):
        m.fit(x[56:], y[56:], batch_size=8, shuffle=False, verbose=0)
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), restored.get_weights()))

    plain, trivial = dense_model(), dense_model()
    plain.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    trivial.compile(optimizer=Lookahead(keras.optimizers.Adam(1e-2), 1, 1.0), loss="mse")
    for m in (plain, trivial):
        m.fit(x, y, batch_size=8, shuffle=False, verbose=0)
    assert max(np.abs(a - b).max() for a, b in zip(plain.get_weights(), trivial.get_weights())) < 1e-6


def embedding_model():
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((12,), dtype="int32"), keras.layers.Embedding(VOCAB, 4),
                             keras.layers.GlobalAveragePooling1D()])


def fit_lazy(rule):
    model = embedding_model()
    before = model.layers[0].get_weights()[0].copy()
    model.compile(optimizer=LazyOptimizer(keras.optimizers.Adam(1e-2, epsilon=1e-8), rule=rule),
                  loss=lambda y, p: keras.ops.mean((keras.ops.sum(p, axis=-1, keepdims=True) - y) ** 2))
    model.fit(IDS, TARGET, batch_size=4, shuffle=False, verbose=0)
    return before, model


@pytest.mark.parametrize("rule", ["essay", "sparse"])
def test_lazy_rows_stay_put(rule):
    before, model = fit_lazy(rule)
    after = model.layers[0].get_weights()[0]
    assert np.array_equal(after[40:], before[40:])
    assert np.abs(after[:40] - before[:40]).max() > 1e-3
    assert len(model.optimizer.slots_of(model.layers[0].embeddings)) == 2


def test_lazy_sparse_rule_agrees_with_torch_lazy_adam():
    """Same start, same gradients (0.5 |W_r - c_r|^2 summed over the rows of each batch of ids)."""
    start = RNG.standard_normal((VOCAB, 4)).astype("float32")
    centres = RNG.standard_normal((VOCAB, 4)).astype("float32")
    variable = keras.Variable(start, name="embeddings")
    keras_opt = LazyOptimizer(keras.optimizers.Adam(1e-2, epsilon=1e-8), rule="sparse")
    weight = torch.nn.Parameter(torch.tensor(start))
    torch_opt = LazyAdam([weight], lr=1e-2)
    for batch in IDS[:30]:
        rows = np.unique(batch)
        for w, apply in ((np.array(variable), "keras"), (weight.detach().numpy(), "torch")):
            grad = np.zeros_like(start)
            grad[rows] = w[rows] - centres[rows]
            if apply == "keras":
                keras_opt.apply([keras.ops.convert_to_tensor(grad)], [variable])
            else:
                weight.grad = torch.from_numpy(grad)
                torch_opt.step()
    assert np.abs(np.array(variable) - weight.detach().numpy()).max() < 1e-5
    assert np.array_equal(np.array(variable)[40:], start[40:])


def test_rules_differ_only_in_the_slots():
    _, essay = fit_lazy("essay")
    _, sparse = fit_lazy("sparse")
    slot = lambda m: np.array(m.optimizer.slots_of(m.layers[0].embeddings)[0])  # noqa: E731
    assert not np.allclose(slot(essay), slot(sparse))


def test_slots_are_found_exactly_and_unknown_optimizers_refused():
    table = keras.Variable(np.zeros((VOCAB, 4), "float32"), name="embeddings")
    ema = LazyOptimizer(keras.optimizers.Adam(1e-2, use_ema=True))
    assert ema.rule == "sparse"  # SparseAdam's and TensorFlow Addons' LazyAdam's semantics by default
    ema.apply([keras.ops.ones((VOCAB, 4))], [table])
    names = sorted(s.name.rsplit("_", 1)[-1] for s in ema.slots_of(table))
    assert names == ["momentum", "velocity"]  # not use_ema's average, which has the same shape and prefix
    with pytest.raises(ValueError, match="Adafactor"):
        LazyOptimizer(keras.optimizers.Adafactor())

    class Custom(keras.optimizers.Adam):
        pass

    with pytest.raises(ValueError, match="Custom"):
        LazyOptimizer(Custom())


def test_lazy_variables_given_as_objects():
    words = keras.Variable(np.zeros((VOCAB, 4), "float32"), name="embeddings")
    positions = keras.Variable(np.zeros((12, 4), "float32"), name="embeddings")
    opt = LazyOptimizer(keras.optimizers.Adam(1e-2), lazy_variables=[words])
    assert opt.is_lazy(words) and not opt.is_lazy(positions)
    assert LazyOptimizer(keras.optimizers.Adam(1e-2)).is_lazy(positions)  # the name default catches both
    with pytest.raises(ValueError, match="serialised"):
        opt.get_config()


def test_bad_arguments_and_config():
    with pytest.raises(TypeError, match="lazy_variables"):
        LazyOptimizer(keras.optimizers.Adam(), lazy_variables="embeddings")
    with pytest.raises(ValueError, match="lazy_variables"):
        LazyOptimizer(keras.optimizers.Adam(), lazy_variables=[])
    with pytest.raises(ValueError, match="`rule` must be one of 'sparse', 'essay'"):
        LazyOptimizer(keras.optimizers.Adam(), rule="lazy")
    with pytest.raises(ValueError, match="slow_step_size"):
        Lookahead(keras.optimizers.Adam(), slow_step_size=2)
    clone = LazyOptimizer.from_config(LazyOptimizer(keras.optimizers.Adam(), ["w"], "sparse").get_config())
    assert clone.lazy_variables == ["w"] and clone.rule == "sparse"


class MaskedLazy(LazyOptimizer):
    """The same wrapper forced onto its masked path (dense inner update, absent rows restored)."""

    _row_wise_enabled = False


ROW_WISE_OPTIMIZERS = {
    "SGD": lambda: keras.optimizers.SGD(0.1),
    "SGD-nesterov": lambda: keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True),
    "Adam": lambda: keras.optimizers.Adam(1e-2),
    "Adam-amsgrad-clipnorm": lambda: keras.optimizers.Adam(1e-2, amsgrad=True, clipnorm=0.5),
    "AdamW": lambda: keras.optimizers.AdamW(1e-2, weight_decay=0.1),
    "Adamax": lambda: keras.optimizers.Adamax(1e-2),
    "RMSprop-centred-momentum": lambda: keras.optimizers.RMSprop(1e-2, momentum=0.5, centered=True),
    "Adagrad": lambda: keras.optimizers.Adagrad(0.1),
    "Adadelta": lambda: keras.optimizers.Adadelta(1.0),
    "Lion": lambda: keras.optimizers.Lion(1e-3),
    "Adam-schedule": lambda: keras.optimizers.Adam(keras.optimizers.schedules.ExponentialDecay(1e-2, 3, 0.5)),
}


RNG_START = np.random.default_rng(2).standard_normal((50, 3)).astype("float32")


def lazy_run(cls, make, rule="sparse", steps=10):
    """A table (rows 20.. never touched) and a dense kernel, stepped together; returns everything it holds."""
    rng = np.random.default_rng(1)
    table = keras.Variable(RNG_START, name="embeddings")
    kernel = keras.Variable(np.ones((4, 3), "float32"), name="kernel")
    opt = cls(make(), rule=rule)
    for _ in range(steps):
        g = np.zeros((50, 3), "float32")
        g[rng.integers(0, 20, 5)] = rng.standard_normal((5, 3))
        kernel_grad = rng.standard_normal((4, 3)).astype("float32")
        opt.apply([keras.ops.convert_to_tensor(g), keras.ops.convert_to_tensor(kernel_grad)], [table, kernel])
    return opt, [np.array(table), np.array(kernel)] + [np.array(s) for s in opt.slots_of(table)]


@pytest.mark.parametrize("name", ROW_WISE_OPTIMIZERS)
def test_row_wise_path_equals_the_masked_path(name):
    row_wise, state = lazy_run(LazyOptimizer, ROW_WISE_OPTIMIZERS[name])
    masked, reference = lazy_run(MaskedLazy, ROW_WISE_OPTIMIZERS[name])
    assert row_wise.row_wise() and not masked.row_wise()
    assert len(state) == len(reference) >= 2
    for a, b in zip(state, reference):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    assert np.array_equal(state[0][20:], RNG_START[20:]) and not np.array_equal(state[0][:20], RNG_START[:20])
    assert int(row_wise.iterations) == int(masked.iterations) == 10


@pytest.mark.parametrize("make", [lambda: keras.optimizers.Nadam(1e-2), lambda: keras.optimizers.Ftrl(0.1),
                                  lambda: keras.optimizers.Adam(1e-2, global_clipnorm=1.0)])
def test_masked_path_where_the_row_wise_one_does_not_apply(make):
    opt, state = lazy_run(LazyOptimizer, make)
    assert not opt.row_wise() and np.array_equal(state[0][20:], RNG_START[20:])
    essay, _ = lazy_run(LazyOptimizer, lambda: keras.optimizers.Adam(1e-2), rule="essay", steps=1)
    assert not essay.row_wise()  # the essay's rule decays every row's moments: no row-wise shortcut


@pytest.mark.skipif(BACKEND != "tensorflow", reason="IndexedSlices gradients are tensorflow's")
def test_indexed_slices_with_duplicate_indices():
    """What an Embedding's gradient is on tensorflow: one row per lookup, repeated ids summed."""
    import tensorflow as tf

    rng = np.random.default_rng(3)
    kinds = ("slices", "dense", "masked", "masked-slices")
    tables = {kind: keras.Variable(RNG_START, name="embeddings") for kind in kinds}
    opts = {kind: (MaskedLazy if kind.startswith("masked") else LazyOptimizer)(keras.optimizers.Adam(1e-2))
            for kind in kinds}
    for _ in range(6):
        ids = np.array([3, 7, 3, 11, 3, 7, 19, 19], "int32")
        values = rng.standard_normal((len(ids), 3)).astype("float32")
        values[6], values[7] = 1.0, -1.0  # row 19 is looked up twice, but its gradient sums to zero: absent
        dense = np.zeros((50, 3), "float32")
        np.add.at(dense, ids, values)
        for kind in kinds:
            slices = tf.IndexedSlices(tf.constant(values), tf.constant(ids), tf.constant([50, 3]))
            opts[kind].apply([slices if kind.endswith("slices") else tf.constant(dense)], [tables[kind]])
    for kind in ("slices", "dense", "masked-slices"):  # repeated ids summed first on both paths
        np.testing.assert_allclose(np.array(tables[kind]), np.array(tables["masked"]), rtol=1e-6, atol=1e-7)
    moved = np.flatnonzero(np.any(np.array(tables["slices"]) != RNG_START, axis=1))
    assert moved.tolist() == [3, 7, 11]


def test_row_wise_path_in_fit_with_an_embedding():
    results = []
    for cls in (LazyOptimizer, MaskedLazy):
        model = embedding_model()
        model.compile(optimizer=cls(keras.optimizers.Adam(1e-2)),
                      loss=lambda y, p: keras.ops.mean((keras.ops.sum(p, axis=-1, keepdims=True) - y) ** 2))
        model.fit(IDS, TARGET, batch_size=4, epochs=2, shuffle=False, verbose=0)
        assert model.optimizer.row_wise() == (cls is LazyOptimizer)
        results.append(model.layers[0].get_weights()[0])
    np.testing.assert_allclose(results[0], results[1], rtol=1e-5, atol=1e-6)
    assert np.abs(results[0][:40] - embedding_model().layers[0].get_weights()[0][:40]).max() > 1e-3


def test_an_empty_apply_is_not_a_step():
    """As Keras's own ``apply([], [])``: nothing moves and no step is counted (Lookahead's schedule included)."""
    w = keras.Variable([0.0])
    opt = Lookahead(keras.optimizers.SGD(1.0), sync_period=2, slow_step_size=0.5)
    opt.apply([keras.ops.convert_to_tensor([-1.0])], [w])
    opt.apply([], [])
    assert int(opt.iterations) == 1 and np.array(w)[0] == 1.0
    opt.apply([keras.ops.convert_to_tensor([-1.0])], [w])  # the second real step: the sync, 0 + 0.5 * (2 - 0)
    assert np.array(w)[0] == 1.0 and int(opt.iterations) == 2
    table = keras.Variable(np.zeros((3, 2), "float32"), name="embeddings")
    lazy = LazyOptimizer(keras.optimizers.Adam(1e-2))
    lazy.apply([keras.ops.ones((3, 2))], [table])
    lazy.apply([], [])
    assert int(lazy.iterations) == 1


def test_row_wise_step_without_present_rows_and_with_weight_decay_excluded():
    """Rows with one nonzero component are present on both paths. A step where a lazy table has no present
    row (eager tensorflow once crashed on its 0-row update: Keras's ``ops.add`` takes a (0, d) tensor for a
    bias), and AdamW whose only non-lazy variable is excluded from
    weight decay (the torch backend once crashed on the empty weight-decay list of the rest)."""
    for make in (lambda: keras.optimizers.Adam(1e-2), lambda: keras.optimizers.AdamW(1e-2, weight_decay=0.3)):
        states = []
        for cls in (LazyOptimizer, MaskedLazy):
            table = keras.Variable(RNG_START[:5], name="embeddings")
            kernel = keras.Variable(np.ones(3, "float32"), name="kernel")
            inner = make()
            if isinstance(inner, keras.optimizers.AdamW):
                inner.exclude_from_weight_decay(var_names=["kernel"])
            opt = cls(inner)
            for rows in ([], [1, 3], [], [3]):
                g = np.zeros((5, 3), "float32")
                g[rows] = (1.0, 0.0, -2.0)  # a present row may have zero components: any nonzero one counts
                opt.apply([keras.ops.convert_to_tensor(g), keras.ops.ones(3)], [table, kernel])
            states.append([np.array(table), np.array(kernel)] + [np.array(s) for s in opt.slots_of(table)])
        for a, b in zip(*states):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
        assert np.array_equal(states[0][0][[0, 2, 4]], RNG_START[[0, 2, 4]]) and int(opt.iterations) == 4
        assert np.all(states[0][0][[1, 3]][:, [0, 2]] != RNG_START[[1, 3]][:, [0, 2]])


@only_once
def test_the_other_backend():
    rerun_under_other_backend(__file__, BACKEND)
