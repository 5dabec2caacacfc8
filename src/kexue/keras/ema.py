"""Exponential moving average of a Keras model's weights, as a callback (chapter 03, eq. ema-closed-form).

Shadow weights follow the trainable weights after every training step,

    shadow_1 = w_1,    shadow_t = beta * shadow_{t-1} + (1 - beta) * w_t,

the rule (and first-step copy) of Keras 3's ``use_ema``. Unlike ``use_ema``, the model keeps its raw weights:
the averaged ones are put in only inside ``with ema.swapped():``, and the raw ones are put back bit for bit
on exit. Non-trainable variables (BatchNorm's moving statistics, counters) are not averaged and not swapped.

Shadows of float16/bfloat16 weights are kept in float32: in bfloat16, ``0.999`` rounds to exactly 1 and an
average kept in the weights' own precision never moves. The callback refuses ``steps_per_execution > 1``
(Keras then calls ``on_train_batch_end`` once per k steps, so the average would skip steps) and the jax
backend (whose ``fit`` keeps the weights outside the model's variables during an epoch; untested here).

The average is not part of the model, so ``model.save``, ``ModelCheckpoint`` and ``BackupAndRestore`` do not
keep it: ``get_state``/``set_state`` and ``save``/``load`` do; ``backup_path`` makes the callback save it at
every epoch end and restore it at the start of ``fit``, as ``BackupAndRestore`` does for the model; and
:class:`EMAModelCheckpoint`, a ``ModelCheckpoint``, writes the average next to every checkpoint it writes.

Example::

    ema = ExponentialMovingAverage(momentum=0.999)
    model.fit(x, y, epochs=10, callbacks=[ema])
    with ema.swapped():
        model.evaluate(x_test, y_test)
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import keras
import numpy as np
from keras import ops

from kexue._checks import fraction

LOW_PRECISION = ("float16", "bfloat16")


@keras.saving.register_keras_serializable(package="kexue")
class ExponentialMovingAverage(keras.callbacks.Callback):
    """Shadow weights beta * shadow + (1 - beta) * w after every training step, with ``swapped()``.

    Args:
        momentum: beta in [0, 1); the average spans about 1 / (1 - beta) steps (eq. ema-window).
        backup_path: optional ``.npz`` file. If given, the average is written there at the end of every epoch,
            read back at the start of ``fit`` when the file exists (a resumed run continues the average it
            had), and deleted at the end of a completed ``fit``; use it next to ``BackupAndRestore`` with its
            default ``save_freq="epoch"`` (with a batch-level ``save_freq`` the model's backup is taken mid-epoch
            and this one at the last epoch end, so the two would not belong to the same step).
    """

    def __init__(self, momentum: float = 0.999, backup_path: str | os.PathLike | None = None):
        super().__init__()
        self.momentum = fraction("momentum", momentum, allow_zero=True)
        if self.momentum == 1:
            raise ValueError("`momentum` must be < 1: with momentum 1 the average never moves")
        if backup_path is not None and not isinstance(backup_path, (str, os.PathLike)):
            raise TypeError(f"`backup_path` must be a path or None, got {type(backup_path).__name__}")
        self.backup_path = None if backup_path is None else os.fspath(backup_path)
        self.variables: list[Any] = []  # the tracked trainable variables, in order
        self.shadow: list[keras.Variable] = []
        self._counts: list[int] = []  # updates each shadow has taken (0: the next one copies)
        self._pending: dict | None = None  # a state set before the model was known
        self._step: Any = None
        self._fit_updates = 0  # updates made by on_train_batch_end in the current fit (EMAModelCheckpoint checks it)

    @property
    def updates(self) -> int:
        """How many updates the oldest shadow has taken."""
        return max(self._counts, default=0)

    def on_train_begin(self, logs: dict | None = None) -> None:
        steps = getattr(self.model, "steps_per_execution", 1)
        if steps > 1:
            raise ValueError(f"ExponentialMovingAverage needs steps_per_execution=1, got {steps}: Keras calls "
                             "on_train_batch_end once per execution, so the average would skip steps")
        self.track(self.model)
        self._fit_updates = 0
        if self.backup_path is not None and os.path.exists(self.backup_path):
            self.load(self.backup_path)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.backup_path is not None:
            self.save(self.backup_path)

    def on_train_end(self, logs: dict | None = None) -> None:
        self._fit_updates = 0  # a later fit without this callback must not look updated to EMAModelCheckpoint
        if self.backup_path is not None and os.path.exists(self.backup_path):
            os.remove(self.backup_path)

    def track(self, model: keras.Model) -> None:
        """Average ``model``'s current trainable variables (``fit`` calls this at every start).

        Variables already tracked keep their average; new ones (another model, unfrozen layers) start with a
        copy at their next update; variables no longer trainable are dropped.
        """
        _supported_backend()
        if not isinstance(model, keras.Model):
            raise TypeError(f"`model` must be a keras.Model, got {type(model).__name__}")
        if not model.built:
            raise ValueError("the model must be built before its weights can be averaged")
        variables = list(model.trainable_variables)
        if [id(v) for v in variables] != [id(v) for v in self.variables] or not self.shadow:
            known = {id(v): (s, c) for v, s, c in zip(self.variables, self.shadow, self._counts)}
            shadow, counts = [], []
            for v in variables:
                s, c = known.get(id(v), (None, 0))
                if s is None:
                    # a NumPy copy: on the torch backend a Variable made from a tensor shares its storage
                    value = ops.convert_to_numpy(ops.cast(v, _shadow_dtype(v.dtype))).copy()
                    s = keras.Variable(value, dtype=_shadow_dtype(v.dtype), trainable=False,
                                       name=f"ema_{v.path.replace('/', '_')}")
                shadow.append(s)
                counts.append(c)
            self.variables, self.shadow, self._counts = variables, shadow, counts
            self._step = _compiled(self._assign_average)
        if self._pending is not None:
            state, self._pending = self._pending, None
            self.set_state(state)

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.update()
        self._fit_updates += 1

    def update(self) -> None:
        """One step of the average: a shadow's first update copies its weight (as Keras's ``use_ema`` does)."""
        if not self.shadow:
            raise RuntimeError("nothing to average yet: pass the callback to fit() or call track(model)")
        momenta = np.array([0.0 if c == 0 else self.momentum for c in self._counts], "float32")
        self._step(ops.convert_to_tensor(momenta))
        self._counts = [c + 1 for c in self._counts]

    def _assign_average(self, momenta: Any) -> None:
        for i, (shadow, variable) in enumerate(zip(self.shadow, self.variables)):
            m = ops.cast(momenta[i], shadow.dtype)
            shadow.assign(m * shadow + (1 - m) * ops.cast(variable, shadow.dtype))

    def averaged_weights(self) -> list[np.ndarray]:
        """The shadow weights as NumPy arrays (float32 for low-precision weights), in the tracked order."""
        return [ops.convert_to_numpy(s) for s in self.shadow]

    @contextmanager
    def swapped(self) -> Iterator[None]:
        """Put the averaged weights into the model for the block; restore the raw ones exactly on exit."""
        if not self.shadow or not any(self._counts):
            raise RuntimeError("nothing to swap in yet: the callback has not seen a training step")
        raw = [ops.convert_to_numpy(v).copy() for v in self.variables]
        try:
            for variable, shadow in zip(self.variables, self.shadow):
                variable.assign(ops.cast(shadow, variable.dtype))
            yield
        finally:
            for variable, value in zip(self.variables, raw):
                variable.assign(value)

    def get_state(self) -> dict:
        """The average as plain values: ``{"momentum", "counts", "shadow"}`` (NumPy arrays, tracked order)."""
        if self._pending is not None and not self.shadow:
            return dict(self._pending)
        return {"momentum": self.momentum, "counts": list(self._counts), "shadow": self.averaged_weights()}

    def set_state(self, state: dict) -> None:
        """Restore what :meth:`get_state` returned; before any model is tracked, it is applied by ``track``.

        Raises ``ValueError`` if the momentum differs from this callback's or the shapes do not match.
        """
        if not isinstance(state, dict) or not {"momentum", "counts", "shadow"} <= set(state):
            raise ValueError("`state` must be a dict with keys 'momentum', 'counts', 'shadow' (see get_state)")
        if float(state["momentum"]) != self.momentum:
            raise ValueError(f"`state` was saved with momentum {float(state['momentum'])}, this callback has "
                             f"{self.momentum}: construct it with the saved momentum")
        shadows, counts = list(state["shadow"]), [int(c) for c in state["counts"]]
        if len(shadows) != len(counts):
            raise ValueError(f"`state` has {len(shadows)} shadows but {len(counts)} counts")
        if not self.shadow:
            self._pending = {"momentum": self.momentum, "counts": counts, "shadow": shadows}
            return
        if len(shadows) != len(self.shadow):
            raise ValueError(f"`state` has {len(shadows)} shadows, this average tracks {len(self.shadow)}")
        for k, (s, value) in enumerate(zip(self.shadow, shadows)):
            if tuple(np.shape(value)) != tuple(s.shape):
                raise ValueError(f"`state` shadow {k} has shape {tuple(np.shape(value))}, the tracked weight "
                                 f"{self.variables[k].path} has {tuple(s.shape)}")
        for s, value in zip(self.shadow, shadows):
            s.assign(np.asarray(value, dtype=s.dtype))
        self._counts = counts

    def save(self, path: str | os.PathLike) -> None:
        """Write :meth:`get_state` to ``path`` (NumPy ``.npz``), atomically."""
        state, path = self.get_state(), os.fspath(path)
        arrays = {f"shadow_{k}": np.asarray(s) for k, s in enumerate(state["shadow"])}
        tmp = f"{path}.tmp"
        with open(tmp, "wb") as f:
            np.savez(f, momentum=state["momentum"], counts=np.asarray(state["counts"], "int64"), **arrays)
        os.replace(tmp, path)

    def load(self, path: str | os.PathLike) -> None:
        """Read a state written by :meth:`save` and :meth:`set_state` it."""
        with np.load(os.fspath(path)) as f:
            n = len(f["counts"])
            state = {"momentum": float(f["momentum"]), "counts": f["counts"].tolist(),
                     "shadow": [f[f"shadow_{k}"] for k in range(n)]}
        self.set_state(state)

    def get_config(self) -> dict:
        return {"momentum": self.momentum, "backup_path": self.backup_path}


class EMAModelCheckpoint(keras.callbacks.ModelCheckpoint):
    """``keras.callbacks.ModelCheckpoint`` that also saves an average: whenever it writes a checkpoint ``path``
    (every one, or only the best with ``save_best_only``), it writes ``ema``'s state to ``ema_path(path)``
    (``path + ".ema.npz"``, see :meth:`ExponentialMovingAverage.save`).

    To resume from checkpoint ``path``: ``model = keras.models.load_model(path)``, ``ema =
    ExponentialMovingAverage(momentum)``, ``ema.load(EMAModelCheckpoint.ema_path(path))``, then
    ``model.fit(..., initial_epoch=..., callbacks=[ema, ...])``: the average continues as if never stopped.

    Args:
        ema: the average, which must also be in ``fit``'s callbacks; the checkpoint raises ``RuntimeError`` if,
            when it saves, the average has not yet been updated for every batch of this ``fit`` (the average
            missing from ``fit``, or listed after a checkpoint that saves every few batches).
        filepath, **kwargs: as for ``keras.callbacks.ModelCheckpoint``.
    """

    def __init__(self, ema: ExponentialMovingAverage, filepath: str | os.PathLike, **kwargs: Any):
        if not isinstance(ema, ExponentialMovingAverage):
            raise TypeError(f"`ema` must be a kexue ExponentialMovingAverage, got {type(ema).__name__}")
        parent = keras.callbacks.ModelCheckpoint
        if not (callable(getattr(parent, "_save_model", None)) and callable(getattr(parent, "_should_save_model",
                                                                                        None))):
            raise NotImplementedError(f"EMAModelCheckpoint hooks ModelCheckpoint._save_model and _should_save_model, "
                                      f"which Keras {keras.__version__} does not have")
        super().__init__(os.fspath(filepath), **kwargs)
        self.ema = ema
        self._batches = 0
        self._saving: str | None = None

    @staticmethod
    def ema_path(checkpoint_path: str | os.PathLike) -> str:
        """Where the average of checkpoint ``checkpoint_path`` is written: ``checkpoint_path + ".ema.npz"``."""
        if not isinstance(checkpoint_path, (str, os.PathLike)):
            raise TypeError(f"`checkpoint_path` must be a path, got {type(checkpoint_path).__name__}")
        return os.fspath(checkpoint_path) + ".ema.npz"

    def on_train_begin(self, logs: dict | None = None) -> None:
        super().on_train_begin(logs)
        self._batches = 0

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self._batches += 1
        super().on_train_batch_end(batch, logs)

    def _should_save_model(self, epoch: int, batch: int | None, logs: dict, filepath: str) -> bool:
        decision = super()._should_save_model(epoch, batch, logs, filepath)
        self._saving = filepath if decision else None
        return decision

    def _save_model(self, epoch: int, batch: int | None, logs: dict) -> None:
        self._saving = None
        super()._save_model(epoch, batch, logs)  # asks _should_save_model, then saves the model (or not)
        if self._saving is not None:
            if self.ema._fit_updates != self._batches:
                raise RuntimeError(f"the average has {self.ema._fit_updates} updates in this fit, the model "
                                   f"{self._batches} steps: pass the ExponentialMovingAverage to fit, before "
                                   "the EMAModelCheckpoint in `callbacks`")
            self.ema.save(self.ema_path(self._saving))


def _shadow_dtype(dtype: str) -> str:
    return "float32" if keras.backend.standardize_dtype(dtype) in LOW_PRECISION else dtype


def _supported_backend() -> None:
    if keras.backend.backend() not in ("tensorflow", "torch"):
        raise NotImplementedError(f"ExponentialMovingAverage supports the tensorflow and torch backends, not "
                                  f"{keras.backend.backend()} (jax's fit keeps the weights outside the "
                                  "model's variables during an epoch)")


def _compiled(fn: Any) -> Any:
    """On the tensorflow backend run the per-batch update as one XLA-fused graph.

    Eager TensorFlow ops cost tens of microseconds each and an unfused graph makes a temporary per
    operation; XLA fuses ``m * s + (1 - m) * w`` into one pass per variable (about 2x faster on the benchmark
    MLP). If XLA is unavailable the first call falls back to a plain ``tf.function``.
    """
    if keras.backend.backend() != "tensorflow":
        return fn
    import tensorflow as tf

    fused, plain = tf.function(fn, jit_compile=True), tf.function(fn)
    state = {"step": fused}

    def step(*args: Any) -> Any:
        try:
            return state["step"](*args)
        except Exception:
            if state["step"] is plain:
                raise
            state["step"] = plain  # no XLA in this TensorFlow build
            return plain(*args)

    return step
