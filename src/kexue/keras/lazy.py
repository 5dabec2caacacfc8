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

RULES = ("sparse", "essay")

# The per-element slots of the Keras optimizers whose update acts row by row (their names as passed to
# ``add_optimizer_variables``). Anything else (Adafactor's factored slots, Lamb's and Muon's whole-matrix
# updates, a subclass with slots of its own, another wrapper) is refused rather than half-handled; the
# averages of ``use_ema`` are not slots and are never restored.
ROW_WISE_SLOTS: dict[str, tuple[str, ...]] = {
    "SGD": ("momentum",),
    "Adam": ("momentum", "velocity", "velocity_hat"),
    "AdamW": ("momentum", "velocity", "velocity_hat"),
    "Nadam": ("momentum", "velocity"),
    "Adamax": ("momentum", "norm"),
    "RMSprop": ("velocity", "momentum", "average_gradient"),
    "Adagrad": ("accumulator",),
    "Adadelta": ("accumulated_grad", "accumulated_delta_var"),
    "Ftrl": ("accumulator", "linear"),
    "Lion": ("momentum",),
}


@keras.saving.register_keras_serializable(package="kexue")
class LazyOptimizer(OptimizerWrapper):
    """Leave untouched the rows of chosen variables whose gradient row is all zero.

    A row is a slice along a variable's first dimension (one token's embedding). Two rules:

    * ``rule="sparse"`` (the default; eq. ``sparse-rule``, that of ``torch.optim.SparseAdam`` and of
      TensorFlow Addons' ``LazyAdam``): an absent row keeps its weights and its optimizer slots
      (momentum, velocity, ...), as if the step had skipped it;
    * ``rule="essay"`` (eq. ``essay-rule``): the inner optimizer runs as usual, so the moments of every
      row decay, but an absent row's *weights* are restored: only the weight update is masked. (The
      essay's own code scales the learning rate instead, which does not freeze momentum-SGD rows.)

    A row is absent when its gradient row is all zero.

    Args:
        optimizer: the ``keras.optimizers.Optimizer`` to wrap: one of ``ROW_WISE_SLOTS`` (exact class).
        lazy_variables: the variables to treat lazily, as ``keras.Variable`` objects or names matched
            against ``variable.name``. The default ``("embeddings",)`` matches the weight of every
            ``keras.layers.Embedding``, and also any other variable named so (a position embedding, say):
            pass the variables themselves to be exact.
        rule: ``"sparse"`` or ``"essay"``.
        name: optional name.

    Slots are found exactly: the inner optimizer's variables named ``<variable path>_<slot>`` for the
    slots its class is known to keep per element. The scalar step count is never masked, so Adam's bias
    correction uses the optimizer's step, as SparseAdam's uses the parameter's. The update is the inner
    optimizer's dense one followed by a masked restore: it costs more than the dense update (see the
    chapter), unlike ``kexue.torch.LazyAdam`` on sparse gradients.
    """

    _config_keys = ("lazy_variables", "rule")

    def __init__(
        self,
        optimizer: keras.optimizers.Optimizer,
        lazy_variables: tuple[str | keras.Variable, ...] | list[str | keras.Variable] = ("embeddings",),
        rule: str = "sparse",
        name: str | None = None,
        **kwargs: Any,
    ):
        if isinstance(lazy_variables, (str, keras.Variable)) or not all(
            isinstance(n, (str, keras.Variable)) for n in lazy_variables
        ):
            raise TypeError(f"`lazy_variables` must be a list of variables or variable names, got {lazy_variables!r}")
        if not lazy_variables:
            raise ValueError("`lazy_variables` is empty: nothing would be lazy; use the inner optimizer itself")
        rule = one_of("rule", rule, RULES)
        if type(optimizer).__name__ not in ROW_WISE_SLOTS or type(optimizer).__module__.split(".")[0] != "keras":
            raise ValueError(
                f"`optimizer` must be one of the Keras optimizers whose slots are known to act row by row "
                f"({', '.join(ROW_WISE_SLOTS)}); got {type(optimizer).__name__}"
            )
        super().__init__(optimizer, name=name, **kwargs)
        self.lazy_variables = list(lazy_variables)
        self.rule = rule

    def is_lazy(self, variable: keras.Variable) -> bool:
        if len(variable.shape) < 1:
            return False
        return any(variable is n if isinstance(n, keras.Variable) else variable.name == n for n in self.lazy_variables)

    def slots_of(self, variable: keras.Variable) -> list[keras.Variable]:
        """The inner optimizer's per-row state for ``variable`` (empty for plain SGD)."""
        prefix = variable.path.replace("/", "_")
        names = {f"{prefix}_{slot}" for slot in ROW_WISE_SLOTS[type(self.inner_optimizer).__name__]}
        return [s for s in self.inner_optimizer.variables if s.name in names]

    def get_config(self) -> dict[str, Any]:
        if any(isinstance(n, keras.Variable) for n in self.lazy_variables):
            raise ValueError("a LazyOptimizer given variables (not names) in `lazy_variables` cannot be serialised; "
                             "pass variable names to save it")
        return super().get_config()

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
