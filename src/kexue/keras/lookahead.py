"""Lookahead as a Keras 3 optimizer wrapper (chapter 02, eq. lookahead-rule).

Reference: M. R. Zhang, J. Lucas, G. Hinton, J. Ba, "Lookahead Optimizer: k steps forward, 1 step back",
NeurIPS 2019; Su Jianlin, https://kexue.fm/archives/6869.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import keras
from keras import ops

from kexue._checks import fraction, positive_int
from kexue.keras.wrapper import OptimizerWrapper


@keras.saving.register_keras_serializable(package="kexue")
class Lookahead(OptimizerWrapper):
    """Lookahead around any Keras optimizer: k fast steps forward, then one slow step back.

    Slow weights are copied from every variable the optimizer was built for at the first step (whether or
    not that variable has a gradient then); after every ``sync_period``-th inner step,
    ``phi <- phi + slow_step_size * (theta - phi)`` and ``theta <- phi``.

    Args:
        optimizer: the ``keras.optimizers.Optimizer`` instance to wrap.
        sync_period: inner steps between synchronisations, k >= 1.
        slow_step_size: alpha in (0, 1]; ``slow_step_size=1`` is the inner optimizer, whatever ``sync_period``.
        slow_weights_at_end: at the end of ``model.fit`` (``finalize_variable_values``) put the slow weights,
            the result of the paper's Algorithm 1, into the model, as Keras does for ``use_ema``; a later
            ``fit`` continues from them.
        name: optional name.

    Example::

        model.compile(optimizer=Lookahead(keras.optimizers.Adam(1e-3), sync_period=5), loss=...)
        with model.optimizer.swapped():  # evaluate the slow weights in the middle of training
            model.evaluate(...)

    Works in ``model.fit``, saves and restores with the model (the slow weights and the step count are
    optimizer variables), and runs on the tensorflow and torch backends.
    """

    _config_keys = ("sync_period", "slow_step_size", "slow_weights_at_end")

    def __init__(
        self,
        optimizer: keras.optimizers.Optimizer,
        sync_period: int = 5,
        slow_step_size: float = 0.5,
        slow_weights_at_end: bool = True,
        name: str | None = None,
        **kwargs: Any,
    ):
        sync_period = positive_int("sync_period", sync_period)
        slow_step_size = fraction("slow_step_size", slow_step_size)
        if not isinstance(slow_weights_at_end, bool):
            raise TypeError(f"`slow_weights_at_end` must be a bool, got {slow_weights_at_end!r}")
        super().__init__(optimizer, name=name, **kwargs)
        self.sync_period = sync_period
        self.slow_step_size = slow_step_size
        self.slow_weights_at_end = slow_weights_at_end

    def build(self, var_list: list[keras.Variable]) -> None:
        # The base class's `_iterations` counts inner steps; the slow weights are filled at the first one.
        self._slow_weights = [self.add_variable_from_reference(v, name="slow") for v in var_list]
        super().build(var_list)

    def apply(self, grads: list[Any], trainable_variables: list[keras.Variable] | None = None) -> None:
        grads, variables = self._gradients_and_variables(grads, trainable_variables)
        if not grads:  # reached with an empty list, or when every variable is `overwrite_with_gradient`
            return
        slow = [self._slow_weights[self._get_variable_index(v)] for v in variables]

        def start() -> None:
            # Every built variable, not only those with a gradient now: a slow copy left at its zero
            # initial value would pull its variable to (1 - alpha) * 0 + alpha * value at the first sync.
            for v in self._trainable_variables:
                self._slow_weights[self._get_variable_index(v)].assign(v)

        def synchronise() -> None:
            # eq. (lookahead-rule): the slow weights step towards the fast ones; the fast restart there.
            for s, v in zip(slow, variables):
                s.assign(s + self.slow_step_size * (v - s))
                v.assign(s)

        ops.cond(ops.equal(self._iterations, 0), start, lambda: None)
        self.inner_optimizer.apply(grads, variables)
        self._iterations.assign_add(1)
        ops.cond(ops.equal(self._iterations % self.sync_period, 0), synchronise, lambda: None)

    def _slow_pairs(self) -> list[tuple[keras.Variable, keras.Variable]]:
        if not self.built:
            raise RuntimeError("the optimizer has not been built: no slow weights yet")
        return [(v, self._slow_weights[self._get_variable_index(v)]) for v in self._trainable_variables]

    def slow_weights(self) -> list[Any]:
        """The slow weights as tensors, in the order of the variables the optimizer was built for.

        Before the first step they are the variables themselves (the slow copy is taken then).
        """
        first = int(ops.convert_to_numpy(self._iterations)) == 0
        return [ops.copy(v.value if first else s.value) for v, s in self._slow_pairs()]

    @contextmanager
    def swapped(self) -> Iterator[None]:
        """Slow weights in the model's variables for the block; the fast ones restored exactly on exit."""
        pairs = self._slow_pairs()
        slow = self.slow_weights()
        fast = [ops.copy(v.value) for v, _ in pairs]
        try:
            for (v, _), s in zip(pairs, slow):
                v.assign(s)
            yield
        finally:
            for (v, _), f in zip(pairs, fast):
                v.assign(f)

    def finalize_variable_values(self, var_list: list[keras.Variable]) -> None:
        super().finalize_variable_values(var_list)
        if self.slow_weights_at_end and self.built and int(ops.convert_to_numpy(self._iterations)) > 0:
            for v, s in self._slow_pairs():
                v.assign(s)
