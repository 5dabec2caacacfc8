"""Lookahead as a Keras 3 optimizer wrapper (chapter 02, eq. lookahead-rule).

Reference: M. R. Zhang, J. Lucas, G. Hinton, J. Ba, "Lookahead Optimizer: k steps forward, 1 step back",
NeurIPS 2019; Su Jianlin, https://kexue.fm/archives/6869.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from kexue._checks import fraction, positive_int
from kexue.keras.wrapper import OptimizerWrapper


@keras.saving.register_keras_serializable(package="kexue")
class Lookahead(OptimizerWrapper):
    """Lookahead around any Keras optimizer: k fast steps forward, then one slow step back.

    Slow weights are copied from the model's weights at the first step; after every
    ``sync_period``-th inner step, ``phi <- phi + slow_step_size * (theta - phi)`` and ``theta <- phi``.

    Args:
        optimizer: the ``keras.optimizers.Optimizer`` instance to wrap.
        sync_period: inner steps between synchronisations, k >= 1.
        slow_step_size: alpha in (0, 1]; ``sync_period=1, slow_step_size=1`` is the inner optimizer.
        name: optional name.

    Example::

        model.compile(optimizer=Lookahead(keras.optimizers.Adam(1e-3), sync_period=5), loss=...)

    Works in ``model.fit``, saves and restores with the model (the slow weights and the step count are
    optimizer variables), and runs on the tensorflow and torch backends.
    """

    _config_keys = ("sync_period", "slow_step_size")

    def __init__(
        self,
        optimizer: keras.optimizers.Optimizer,
        sync_period: int = 5,
        slow_step_size: float = 0.5,
        name: str | None = None,
        **kwargs: Any,
    ):
        sync_period = positive_int("sync_period", sync_period)
        slow_step_size = fraction("slow_step_size", slow_step_size)
        super().__init__(optimizer, name=name, **kwargs)
        self.sync_period = sync_period
        self.slow_step_size = slow_step_size

    def build(self, var_list: list[keras.Variable]) -> None:
        # The base class's `_iterations` counts inner steps; the slow weights are filled at the first one.
        self._slow_weights = [self.add_variable_from_reference(v, name="slow") for v in var_list]
        super().build(var_list)

    def apply(self, grads: list[Any], trainable_variables: list[keras.Variable] | None = None) -> None:
        grads, variables = self._gradients_and_variables(grads, trainable_variables)
        if not grads:
            return
        slow = [self._slow_weights[self._get_variable_index(v)] for v in variables]

        def start() -> None:
            for s, v in zip(slow, variables):
                s.assign(v)

        def synchronise() -> None:
            # eq. (lookahead-rule): the slow weights step towards the fast ones; the fast restart there.
            for s, v in zip(slow, variables):
                s.assign(s + self.slow_step_size * (v - s))
                v.assign(s)

        ops.cond(ops.equal(self._iterations, 0), start, lambda: None)
        self.inner_optimizer.apply(grads, variables)
        self._iterations.assign_add(1)
        ops.cond(ops.equal(self._iterations % self.sync_period, 0), synchronise, lambda: None)
