"""Gradient accumulation as a Keras 3 optimizer wrapper (chapter 01, eq. accumulated-update).

Reference: Su Jianlin, "用时间换取效果:Keras梯度累积优化器", 2019-07-08, https://kexue.fm/archives/6794.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from kexue._checks import positive_int
from kexue.keras.wrapper import OptimizerWrapper


@keras.saving.register_keras_serializable(package="kexue")
class GradientAccumulation(OptimizerWrapper):
    """Make any Keras optimizer apply the mean of ``steps`` successive gradients once every ``steps`` calls.

    With micro-batch gradients :math:`g_1, \\dots, g_n` of a loss averaged over each (equal-sized)
    micro-batch, the wrapped optimizer sees :math:`\\bar g = \\frac1n \\sum_k g_k`, which is exactly
    the gradient of the loss averaged over the union of the micro-batches (eq. ``mean-of-means``).
    Between updates the weights do not move and the inner optimizer's state (moments, iteration
    count, learning-rate schedule) does not advance, so schedules and weight decay count updates.

    Variables marked ``overwrite_with_gradient`` (float8 scaling factors) are not averaged: as in
    Keras's own accumulation, they take the maximum of their values over the cycle at the update.

    Args:
        optimizer: the ``keras.optimizers.Optimizer`` instance to wrap (without its own
            ``gradient_accumulation_steps``). A wrapper that counts steps (``Lookahead``) goes inside:
            ``GradientAccumulation(Lookahead(Adam(...)), n)``; the other order is refused.
        steps: number of micro-batches per update, an integer >= 1 (1 is a plain pass-through).
        name: optional name of this optimizer.

    Example::

        model.compile(optimizer=GradientAccumulation(keras.optimizers.Adam(1e-3), steps=4), loss=...)
        model.fit(x, y, batch_size=8)   # updates as if batch_size were 32

    Works in ``model.fit``, is saved and restored with the model (``.keras`` files) and runs on the
    tensorflow and torch backends. The cycle of ``steps`` micro-batches runs on across epochs; a short
    last batch of an epoch still gets the weight ``1/steps`` (chapter 01, eq. ``unequal-sizes``), so
    choose a dataset size divisible by ``batch_size`` or drop the remainder. JAX's stateless training
    loop is not supported: use Keras's own ``gradient_accumulation_steps`` there.
    """

    _config_keys = ("steps",)
    _updates_every_step = False

    def __init__(self, optimizer: keras.optimizers.Optimizer, steps: int, name: str | None = None, **kwargs: Any):
        if isinstance(optimizer, keras.optimizers.Optimizer) and optimizer.gradient_accumulation_steps:
            raise ValueError(
                "`optimizer` already accumulates gradients (gradient_accumulation_steps="
                f"{optimizer.gradient_accumulation_steps}); wrap an optimizer without it"
            )
        steps = positive_int("steps", steps)
        super().__init__(optimizer, name=name, **kwargs)
        self.steps = steps

    def build(self, var_list: list[keras.Variable]) -> None:
        # One running sum per trainable variable; the micro-step counter is the base class's
        # `_iterations`, which counts calls to `apply` (micro-batches), not updates.
        self._gradient_sums = [self.add_variable_from_reference(v, name="gradient_sum") for v in var_list]
        super().build(var_list)

    @property
    def micro_steps(self) -> keras.Variable:
        """How many micro-batch gradients have been received in all."""
        return self._iterations

    def _overwrite_with_gradients(self, grads: list[Any], variables: list[keras.Variable]) -> None:
        """Variables whose "gradient" is their next value (float8 scaling factors) are not averaged:
        as in Keras's own accumulation, the running slot keeps the elementwise maximum (starting from
        zero) and the variable takes it at the update, unchanged in between."""
        is_update = ops.equal((self._iterations + 1) % self.steps, 0)
        for g, v in zip(grads, variables):
            acc = self._gradient_sums[self._get_variable_index(v)]
            largest = ops.maximum(g, acc)
            v.assign(ops.where(is_update, largest, v.value))
            acc.assign(ops.where(is_update, ops.zeros_like(acc), largest))

    def apply(self, grads: list[Any], trainable_variables: list[keras.Variable] | None = None) -> None:
        if len(grads) == 0:  # a no-op, as for Keras's optimizers
            return
        grads, variables = self._gradients_and_variables(grads, trainable_variables)
        if not grads:  # only overwritten variables: the micro-batch still counts
            self._iterations.assign_add(1)
            return
        sums = [self._gradient_sums[self._get_variable_index(v)] for v in variables]

        def update() -> None:
            # eq. (accumulated-update): hand the inner optimizer the mean of the n micro-gradients,
            # (g_1 + ... + g_{n-1} + g_n) / n, then start the next sum from zero.
            means = [(s + g) / self.steps for s, g in zip(sums, grads)]
            self.inner_optimizer.apply(means, variables)
            for s in sums:
                s.assign(ops.zeros_like(s))

        def accumulate() -> None:
            for s, g in zip(sums, grads):
                s.assign_add(g)

        is_update = ops.equal((self._iterations + 1) % self.steps, 0)
        ops.cond(is_update, update, accumulate)
        self._iterations.assign_add(1)
