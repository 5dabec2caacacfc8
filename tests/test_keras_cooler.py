"""Chapter 03 in Keras 3: capture, the EMA callback, SeededPyDataset; re-run under the other backend."""

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras  # noqa: E402
from keras import ops  # noqa: E402

from kexue.capture import record  # noqa: E402
from kexue.keras import (EMAModelCheckpoint, ExponentialMovingAverage, SeededPyDataset, SelfAttention,  # noqa: E402
                         batches_seen_by_fit, capture)
from tests.keras_backends import only_once, rerun_under_other_backend  # noqa: E402

BACKEND = keras.backend.backend()
RNG = np.random.default_rng(0)


def attention_model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((5, 4))
    h = keras.layers.Dense(8, name="embed")(inputs)
    a = SelfAttention(6, name="att")(h)
    return keras.Model(inputs, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling1D()(a)))


def snapshot(variables):
    return [ops.convert_to_numpy(v).copy() for v in variables]


def test_capture_returns_the_attention_matrix_and_layer_io_without_touching_weights():
    model = attention_model()
    x = RNG.standard_normal((3, 5, 4)).astype("float32")
    before = snapshot(model.weights)
    out, values = capture(model, x, layers=["embed"])
    assert set(values) == {"embed:input", "embed:output", "att/attention"}
    att = model.get_layer("att")
    h = values["embed:output"]
    q, k = h @ ops.convert_to_numpy(att.query), h @ ops.convert_to_numpy(att.key)
    scores = q @ k.transpose(0, 2, 1) / np.sqrt(6)
    expected = np.exp(scores - scores.max(-1, keepdims=True))
    expected /= expected.sum(-1, keepdims=True)
    assert np.abs(values["att/attention"] - expected).max() < 1e-6
    assert np.abs(values["att/attention"].sum(-1) - 1).max() < 1e-6
    assert np.allclose(ops.convert_to_numpy(out), ops.convert_to_numpy(model(x)), atol=1e-6)
    assert all(np.array_equal(a, b) for a, b in zip(before, snapshot(model.weights)))
    assert "call" not in model.get_layer("embed").__dict__  # the tap is removed


def test_capture_rejects_bad_arguments_and_record_is_inert_outside_a_capture():
    model = attention_model()
    x = np.zeros((1, 5, 4), "float32")
    with pytest.raises(ValueError):
        capture(model, x, layers=["no_such_layer"])
    with pytest.raises(TypeError, match="sequence of layer names"):
        capture(model, x, layers="embed")
    with pytest.raises(TypeError, match="keras.Model"):
        capture(lambda t: t, x)
    assert record("anything", 3) == 3
    with pytest.raises(TypeError):
        record("", 1)


def test_a_layer_applied_twice_records_twice():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((5, 4))
    att = SelfAttention(4, name="shared")
    model = keras.Model(inputs, att(att(inputs)))
    _, values = capture(model, np.ones((2, 5, 4), "float32"))
    assert set(values) == {"shared/attention", "shared/attention/1"}


class Inner(keras.Model):
    """A subclassed model with a nested block: capture must find 'deep' and must not keep its build pass."""

    def __init__(self):
        super().__init__()
        self.block = keras.Sequential([keras.layers.Dense(8, name="deep")], name="block")
        self.att = SelfAttention(4, name="sub_att")

    def call(self, x):
        return self.att(self.block(x))


def test_capture_on_an_unbuilt_subclassed_model_finds_nested_layers_and_keeps_only_real_values():
    keras.utils.set_random_seed(0)
    model = Inner()
    x = RNG.standard_normal((2, 5, 4)).astype("float32")
    out, values = capture(model, x, layers=["deep"])
    assert set(values) == {"deep:input", "deep:output", "sub_att/attention"}  # no "/1" from a build pass
    assert all(isinstance(v, np.ndarray) for v in values.values())
    assert np.allclose(values["deep:output"], ops.convert_to_numpy(model.block(x)), atol=1e-6)


def test_a_capture_does_not_collect_what_another_thread_records():
    import threading

    from kexue.capture import recording

    with recording() as values:
        worker = threading.Thread(target=record, args=("from another thread", 1))
        worker.start()
        worker.join()
        record("from this thread", 2)
    assert values == {"from this thread": 2}


def mlp(use_ema=False, momentum=0.9, batchnorm=False):
    keras.utils.set_random_seed(1)
    layers = [keras.Input((10,)), keras.layers.Dense(16, activation="relu")]
    layers += [keras.layers.BatchNormalization()] if batchnorm else []
    model = keras.Sequential(layers + [keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(0.1, use_ema=use_ema, ema_momentum=momentum), "mse")
    return model


X = RNG.standard_normal((128, 10)).astype("float32")
Y = RNG.standard_normal((128, 1)).astype("float32")


class WeightLog(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        self.log = getattr(self, "log", []) + [snapshot(self.model.trainable_variables)]


def test_ema_equals_the_closed_form_weighted_sum_of_iterates():
    model, ema, log = mlp(), ExponentialMovingAverage(0.8), WeightLog()
    model.fit(X, Y, batch_size=16, epochs=2, verbose=0, shuffle=False, callbacks=[log, ema])
    t, beta = len(log.log), 0.8
    weights = np.array([beta ** (t - 1)] + [(1 - beta) * beta ** (t - i) for i in range(2, t + 1)])
    assert abs(weights.sum() - 1) < 1e-12
    for k, average in enumerate(ema.averaged_weights()):
        expected = sum(w * np.asarray(step[k], np.float64) for w, step in zip(weights, log.log))
        assert np.abs(average - expected).max() < 2e-6


def test_ema_callback_agrees_with_keras_use_ema():
    builtin = mlp(use_ema=True)
    builtin.fit(X, Y, batch_size=16, epochs=2, verbose=0, shuffle=False)
    ours, ema = mlp(), ExponentialMovingAverage(0.9)
    ours.fit(X, Y, batch_size=16, epochs=2, verbose=0, shuffle=False, callbacks=[ema])
    for a, b in zip(snapshot(builtin.trainable_variables), ema.averaged_weights()):
        assert np.abs(a - b).max() < 1e-6
    # use_ema left the average in its model; ours keeps the raw weights
    assert max(np.abs(a - b).max() for a, b in zip(snapshot(ours.trainable_variables), ema.averaged_weights())) > 1e-3


def test_swapped_puts_averages_in_and_restores_raw_weights_bit_for_bit_leaving_batchnorm_stats():
    model, ema = mlp(batchnorm=True), ExponentialMovingAverage(0.9)
    model.fit(X, Y, batch_size=16, epochs=2, verbose=0, callbacks=[ema])
    raw, stats = snapshot(model.trainable_variables), snapshot(model.non_trainable_variables)
    with ema.swapped():
        inside = snapshot(model.trainable_variables)
        assert all(np.array_equal(a, b) for a, b in zip(inside, ema.averaged_weights()))
        assert all(np.array_equal(a, b) for a, b in zip(stats, snapshot(model.non_trainable_variables)))
    assert all(np.array_equal(a, b) for a, b in zip(raw, snapshot(model.trainable_variables)))
    with pytest.raises(KeyError):
        with ema.swapped():
            raise KeyError("an error inside the block")
    assert all(np.array_equal(a, b) for a, b in zip(raw, snapshot(model.trainable_variables)))


def test_ema_rejects_bad_input():
    for bad in (1.0, -0.1, 2):
        with pytest.raises(ValueError):
            ExponentialMovingAverage(bad)
    ema = ExponentialMovingAverage(0.9)
    with pytest.raises(RuntimeError, match="swap"):
        with ema.swapped():
            pass
    with pytest.raises(RuntimeError, match="average"):
        ema.update()


def test_raw_weights_are_bit_identical_with_and_without_the_callback():
    """The essay's point: the average watches the training, it does not change it."""
    plain, watched = mlp(), mlp()
    plain.fit(X, Y, batch_size=16, epochs=2, verbose=0, shuffle=False)
    watched.fit(X, Y, batch_size=16, epochs=2, verbose=0, shuffle=False, callbacks=[ExponentialMovingAverage(0.9)])
    assert all(np.array_equal(a, b) for a, b in zip(snapshot(plain.weights), snapshot(watched.weights)))


@pytest.mark.skipif(BACKEND != "tensorflow", reason="the torch backend itself refuses steps_per_execution > 1")
def test_ema_refuses_steps_per_execution_above_one():
    model = mlp()
    model.compile(keras.optimizers.SGD(0.1), "mse", steps_per_execution=4)  # 4 steps per on_train_batch_end
    with pytest.raises(ValueError, match="steps_per_execution"):
        model.fit(X, Y, batch_size=16, epochs=1, verbose=0, callbacks=[ExponentialMovingAverage(0.9)])


def test_ema_refuses_the_jax_backend_clearly(monkeypatch):
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(NotImplementedError, match="jax"):
        ExponentialMovingAverage(0.9).track(mlp())


def test_bfloat16_weights_get_a_float32_average_that_moves():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, dtype="bfloat16")])
    ema = ExponentialMovingAverage(0.999)
    ema.track(model)
    for v in model.trainable_variables:
        v.assign(np.zeros(v.shape))
    ema.update()  # the copy: 0
    for v in model.trainable_variables:
        v.assign(np.ones(v.shape))
    for _ in range(100):
        ema.update()
    expected = 1 - 0.999**100  # eq. ema-closed-form; in bfloat16 0.999 rounds to 1 and the average stays 0
    for average in ema.averaged_weights():
        # float32 holds 0.999 as 0.99900001: beta^100 moves by 100 beta^99 * 1.3e-8 = 1.2e-6, so rtol 1e-4
        assert average.dtype == np.float32 and np.allclose(average, expected, rtol=1e-4, atol=0)
    with ema.swapped():
        assert all(keras.backend.standardize_dtype(v.dtype) == "bfloat16" for v in model.trainable_variables)
        assert all(np.allclose(ops.convert_to_numpy(ops.cast(v, "float32")), expected, rtol=1e-2)
                   for v in model.trainable_variables)


def test_ema_re_tracks_another_model_and_unfrozen_layers():
    first, ema = mlp(), ExponentialMovingAverage(0.5)
    first.fit(X, Y, batch_size=16, epochs=1, verbose=0, callbacks=[ema])
    second = mlp()
    second.layers[0].trainable = False  # frozen first layer
    second.compile(keras.optimizers.SGD(0.1), "mse")
    second.fit(X[:16], Y[:16], batch_size=16, epochs=1, verbose=0, callbacks=[ema])
    assert len(ema.shadow) == len(second.trainable_variables) == 2
    # a variable new to the average starts with a copy: after one step the average is the weights
    assert all(np.array_equal(a, b) for a, b in zip(ema.averaged_weights(), snapshot(second.trainable_variables)))
    kept = ema.averaged_weights()
    second.layers[0].trainable = True  # unfreeze: two more variables
    second.compile(keras.optimizers.SGD(0.1), "mse")
    second.fit(X[:16], Y[:16], batch_size=16, epochs=1, verbose=0, callbacks=[ema])
    now = snapshot(second.trainable_variables)
    assert len(ema.shadow) == 4
    averages = ema.averaged_weights()
    assert all(np.array_equal(a, b) for a, b in zip(averages[:2], now[:2]))  # new: a copy
    assert all(np.allclose(a, 0.5 * k + 0.5 * w, atol=1e-6) for a, k, w in zip(averages[2:], kept, now[2:]))


class StopAt(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise RuntimeError("interrupted")


def test_ema_state_survives_an_interrupted_fit_with_backup_and_restore(tmp_path):
    def run(callbacks, epochs=3):
        model = mlp()
        model.fit(X, Y, batch_size=16, epochs=epochs, verbose=0, shuffle=False, callbacks=callbacks)
        return model

    whole = ExponentialMovingAverage(0.8)
    run([whole])
    backup, saved = str(tmp_path / "backup"), tmp_path / "ema.npz"
    with pytest.raises(RuntimeError, match="interrupted"):
        run([keras.callbacks.BackupAndRestore(backup), ExponentialMovingAverage(0.8, backup_path=saved), StopAt(2)])
    assert saved.exists()
    resumed = ExponentialMovingAverage(0.8, backup_path=saved)
    run([keras.callbacks.BackupAndRestore(backup), resumed])
    assert resumed.updates == whole.updates == 24 and not saved.exists()
    assert all(np.abs(a - b).max() < 1e-6 for a, b in zip(resumed.averaged_weights(), whole.averaged_weights()))


def test_a_model_checkpoint_restored_into_a_fresh_model_and_callback_resumes_the_same_average(tmp_path):
    whole, pattern = ExponentialMovingAverage(0.8), str(tmp_path / "model_{epoch}.keras")
    model = mlp()
    model.fit(X, Y, batch_size=16, epochs=3, verbose=0, shuffle=False,
              callbacks=[whole, EMAModelCheckpoint(whole, pattern)])
    saved = sorted(p.name for p in tmp_path.iterdir())
    assert saved == [f"model_{e}.keras{suffix}" for e in (1, 2, 3) for suffix in ("", ".ema.npz")]
    restored = keras.models.load_model(tmp_path / "model_2.keras")
    resumed, fresh = ExponentialMovingAverage(0.8), ExponentialMovingAverage(0.8)
    resumed.load(EMAModelCheckpoint.ema_path(tmp_path / "model_2.keras"))
    for ema in (resumed, fresh):
        net = keras.models.load_model(tmp_path / "model_2.keras")
        net.fit(X, Y, batch_size=16, epochs=3, initial_epoch=2, verbose=0, shuffle=False, callbacks=[ema])
    restored.fit(X, Y, batch_size=16, epochs=3, initial_epoch=2, verbose=0, shuffle=False)
    assert all(np.abs(a - b).max() < 1e-6 for a, b in zip(snapshot(restored.weights), snapshot(model.weights)))
    assert resumed.updates == whole.updates == 24
    assert all(np.abs(a - b).max() < 1e-6 for a, b in zip(resumed.averaged_weights(), whole.averaged_weights()))
    # without the saved average, the resumed run's average restarts from a copy: it differs (the check can fail)
    assert max(np.abs(a - b).max() for a, b in zip(fresh.averaged_weights(), whole.averaged_weights())) > 1e-3


def test_ema_model_checkpoint_saves_the_average_only_with_a_checkpoint_and_checks_the_order(tmp_path):
    ema, path = ExponentialMovingAverage(0.8), tmp_path / "best.keras"

    class Losses(keras.callbacks.Callback):  # the monitored value, in a made-up order: best at epochs 1 and 3
        def on_epoch_end(self, epoch, logs=None):
            logs["made_up"] = [3.0, 4.0, 2.0, 5.0][epoch]

    class Written(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.log = getattr(self, "log", []) + [np.load(EMAModelCheckpoint.ema_path(path))["counts"].max()]

    written = Written()
    mlp().fit(X, Y, batch_size=16, epochs=4, verbose=0, shuffle=False, callbacks=[
        ema, Losses(), EMAModelCheckpoint(ema, path, monitor="made_up", mode="min", save_best_only=True), written])
    assert written.log == [8, 8, 24, 24]  # rewritten only at epochs 1 and 3, with the average of that moment
    with pytest.raises(RuntimeError, match="before"):  # saving every 2 batches, listed before the average
        mlp().fit(X, Y, batch_size=16, epochs=1, verbose=0, shuffle=False,
                  callbacks=[EMAModelCheckpoint(ema, path, save_freq=2), ema])
    with pytest.raises(RuntimeError, match="pass the ExponentialMovingAverage to fit"):
        mlp().fit(X, Y, batch_size=16, epochs=1, verbose=0, callbacks=[EMAModelCheckpoint(ema, path)])
    with pytest.raises(TypeError, match="ema"):
        EMAModelCheckpoint(keras.callbacks.Callback(), path)
    with pytest.raises(TypeError, match="checkpoint_path"):
        EMAModelCheckpoint.ema_path(3)


def test_ema_state_round_trips_and_is_checked(tmp_path):
    model, ema = mlp(), ExponentialMovingAverage(0.8)
    model.fit(X, Y, batch_size=16, epochs=1, verbose=0, callbacks=[ema])
    ema.save(tmp_path / "ema.npz")
    loaded = ExponentialMovingAverage(0.8)
    loaded.load(tmp_path / "ema.npz")  # before any model: applied when fit tracks one
    loaded.track(mlp())
    assert loaded.updates == ema.updates and all(
        np.array_equal(a, b) for a, b in zip(loaded.averaged_weights(), ema.averaged_weights()))
    with pytest.raises(ValueError, match="momentum"):
        ExponentialMovingAverage(0.5).set_state(ema.get_state())
    wrong = ema.get_state()
    wrong["shadow"][0] = wrong["shadow"][0].T
    other = ExponentialMovingAverage(0.8)
    other.track(mlp())
    with pytest.raises(ValueError, match="shape"):
        other.set_state(wrong)


def noise(sample, rng):
    return sample + rng.normal(size=sample.shape).astype("float32")


class NaiveDataset(keras.utils.PyDataset):
    """Augments with NumPy's global generator: the trap."""

    def __init__(self, x, y, batch_size, **kwargs):
        super().__init__(**kwargs)
        self.x, self.y, self.batch_size = x, y, batch_size

    def __len__(self):
        return -(-len(self.x) // self.batch_size)

    def __getitem__(self, i):
        rows = slice(i * self.batch_size, (i + 1) * self.batch_size)
        return noise(self.x[rows], np.random), self.y[rows]


def read(make, workers, processes):
    np.random.seed(0)
    return batches_seen_by_fit(make(workers=workers, use_multiprocessing=processes), epochs=3)


def equal(a, b):
    return len(a) == len(b) and all(len(p) == len(q) and all(np.array_equal(u[0], v[0]) and np.array_equal(u[1], v[1])
                                                         for u, v in zip(p, q)) for p, q in zip(a, b))


def once_per_epoch(epochs, n):
    return all(sorted(np.concatenate([y for _, y in epoch]).tolist()) == list(range(n)) for epoch in epochs)


SAMPLES = np.zeros((60, 3), "float32"), np.arange(60)


@pytest.mark.parametrize("workers,processes", [(4, False), (1, True), (4, True)])
def test_seeded_dataset_gives_the_single_worker_batches_under_threads_and_processes(workers, processes):
    def make(**kw):
        return SeededPyDataset(*SAMPLES, batch_size=16, augment=noise, seed=3, **kw)

    reference = read(make, 1, False)
    assert once_per_epoch(reference, 60)
    assert not np.array_equal(reference[0][0][0], reference[1][0][0])  # a new order and new noise each epoch
    assert equal(read(make, workers, processes), reference)


def test_naive_dataset_repeats_its_noise_every_epoch_under_processes():
    def make(**kw):
        return NaiveDataset(*SAMPLES, batch_size=16, **kw)

    single, forked = read(make, 1, False), read(make, 4, True)
    assert once_per_epoch(forked, 60)  # indexed access: no sample lost or repeated...
    assert not equal(forked, single)  # ...but not the single-worker batches,
    # and every forked worker starts from the same copied generator state, every epoch: 3 epochs of batches
    # draw no more distinct noise than one epoch has batches (a seeded dataset draws a fresh value per batch)
    first_values = {float(x[0, 0]) for epoch in forked for x, _ in epoch}
    assert len(first_values) <= len(forked[0]) < 3 * len(forked[0])


@pytest.mark.parametrize("workers,processes", [(1, False), (4, False), (2, True)])
def test_seeded_dataset_keyed_to_fits_epoch_so_a_resumed_fit_repeats_the_uninterrupted_one(workers, processes):
    def make():
        return SeededPyDataset(*SAMPLES, batch_size=16, augment=noise, seed=3, workers=workers,
                               use_multiprocessing=processes)

    first = make()
    whole = batches_seen_by_fit(first, epochs=2, callbacks=[first.epoch_callback()])
    fresh = make()
    resumed = batches_seen_by_fit(fresh, epochs=2, initial_epoch=1, callbacks=[fresh.epoch_callback()])
    assert equal(resumed, whole[1:]) and not equal(whole[:1], whole[1:])
    direct = make()
    direct.epoch = 0  # fit's epoch 0 is key 0
    assert equal(whole[:1], [[direct[b] for b in range(len(direct))]])


def test_evaluate_does_not_move_a_dataset_that_follows_fit():
    ds = SeededPyDataset(*SAMPLES, batch_size=16, augment=noise, seed=3)
    callback = ds.epoch_callback()
    before = ds[0]
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    model.evaluate(ds, verbose=0)
    assert ds.epoch == 0 and equal([[ds[0]]], [[before]]) and callback.dataset is ds


def test_seeded_dataset_validates_and_indexes():
    ds = SeededPyDataset(*SAMPLES, batch_size=16, shuffle=False)
    assert len(ds) == 4 and len(ds[3][0]) == 12 and np.array_equal(ds[0][1], np.arange(16))
    with pytest.raises(IndexError):
        ds[4]
    with pytest.raises(ValueError, match="same length"):
        SeededPyDataset(np.zeros(3), np.zeros(4), batch_size=2)
    with pytest.raises(TypeError, match="callable"):
        SeededPyDataset(*SAMPLES, batch_size=2, augment=3)
    with pytest.raises(ValueError):
        SeededPyDataset(*SAMPLES, batch_size=0)


@only_once
def test_everything_again_under_the_other_backend():
    rerun_under_other_backend(__file__, BACKEND)


@pytest.mark.skipif(BACKEND != "torch", reason="a torch-backend behaviour")
def test_torch_backend_first_fit_with_workers_trains_on_stale_batches():
    """Keras 3.15.1, torch backend: the first fit of a model whose loss is not built yet takes one batch from the
    worker queue to build it and leaves the rest queued, so every epoch starts with the previous one's batches.
    Chapter 03 reports this; if this test fails, Keras has changed and the chapter's text must follow."""
    from kexue.keras.seeded_dataset import _Recorder

    x, y = np.zeros((64, 1), "float32"), np.arange(64, dtype="float32").reshape(64, 1)
    model = _Recorder()
    model.compile(loss="mse", run_eagerly=True)  # the loss is built from a peeked batch
    model.fit(SeededPyDataset(x, y, 16, seed=0, workers=4), epochs=2, verbose=0, shuffle=False)
    epochs = [[(b[0], b[1].ravel().astype(int)) for b in model.batches[i * 4:(i + 1) * 4]] for i in range(2)]
    assert not once_per_epoch(epochs, 64)
