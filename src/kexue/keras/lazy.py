"""Lazy updates for embedding-like variables, as a Keras 3 optimizer wrapper (chapter 02).

Reference: Su Jianlin, "Keras实现两个优化器:Lookahead和LazyOptimizer", 2019-07-30,
https://kexue.fm/archives/6869.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from kexue._checks import one_of
from kexue.keras.wrapper import OptimizerWrapper

RULES = ("essay", "sparse")


@keras.saving.register_keras_serializable(package="kexue")
class LazyOptimizer(OptimizerWrapper):
    """Leave untouched the rows of chosen variables whose gradient row is all zero.

    A row is a slice along a variable's first dimension (one token's embedding). Two rules:

    * ``rule="essay"`` (eq. ``essay-rule``): the inner optimizer runs as usual, so the moments of every
      row decay, but an absent row's *weights* are restored: only the weight update is masked;
    * ``rule="sparse"`` (eq. ``sparse-rule``, that of ``torch.optim.SparseAdam``): an absent row keeps
      its weights and its optimizer slots (momentum, velocity, ...), as if the step had skipped it.

    Args:
        optimizer: the ``keras.optimizers.Optimizer`` to wrap.
        lazy_variables: names of the variables to treat lazily (matched against ``variable.name``);
            the default ``("embeddings",)`` is the weight of every ``keras.layers.Embedding``.
        rule: ``"essay"`` or ``"sparse"``.
        name: optional name.

    Slots are found by Keras's naming convention (``add_variable_from_reference`` names them after the
    variable's path) and must have the variable's shape; the scalar step count is never masked, so
    Adam's bias correction uses the optimizer's step, as SparseAdam's uses the parameter's.
    """

    _config_keys = ("lazy_variables", "rule")

    def __init__(
        self,
        optimizer: keras.optimizers.Optimizer,
        lazy_variables: tuple[str, ...] | list[str] = ("embeddings",),
        rule: str = "essay",
        name: str | None = None,
        **kwargs: Any,
    ):
        if isinstance(lazy_variables, str) or not all(isinstance(n, str) for n in lazy_variables):
            raise TypeError(f"`lazy_variables` must be a list of variable names, got {lazy_variables!r}")
        if not lazy_variables:
            raise ValueError("`lazy_variables` is empty: nothing would be lazy; use the inner optimizer itself")
        rule = one_of("rule", rule, RULES)
        super().__init__(optimizer, name=name, **kwargs)
        self.lazy_variables = list(lazy_variables)
        self.rule = rule

    def is_lazy(self, variable: keras.Variable) -> bool:
        return variable.name in self.lazy_variables and len(variable.shape) >= 1

    def slots_of(self, variable: keras.Variable) -> list[keras.Variable]:
        """The inner optimizer's per-row state for ``variable`` (empty for plain SGD)."""
        prefix = variable.path.replace("/", "_") + "_"
        return [
            s for s in self.inner_optimizer.variables
            if s.name.startswith(prefix) and tuple(s.shape) == tuple(variable.shape)
        ]

    def apply(self, grads: list[Any], trainable_variables: list[keras.Variable] | None = None) -> None:
        grads, variables = self._gradients_and_variables(grads, trainable_variables)
        if not grads:
            return
        # Snapshot what a lazy step must leave alone: the weights (both rules) and the slots ("sparse").
        kept = []
        for g, v in zip(grads, variables):
            if not self.is_lazy(v):
                continue
            dense = ops.convert_to_tensor(g)
            present = ops.any(ops.not_equal(ops.reshape(dense, (v.shape[0], -1)), 0), axis=1)
            targets = [v] + (self.slots_of(v) if self.rule == "sparse" else [])
            # ops.copy: on the torch backend a variable's tensor is updated in place, so take a real copy.
            kept.append((present, [(t, ops.copy(t.value)) for t in targets]))
        self.inner_optimizer.apply(grads, variables)
        for present, targets in kept:
            for target, before in targets:
                mask = ops.reshape(present, (-1,) + (1,) * (len(target.shape) - 1))
                target.assign(ops.where(mask, target, before))
        self._iterations.assign_add(1)
