"""The part every kexue Keras optimizer wrapper shares: holding, building, saving an inner optimizer.

Modelled on ``keras.optimizers.LossScaleOptimizer``: the wrapper is itself a Keras optimizer, its
``variables`` are its own followed by the inner optimizer's (so ``.keras`` files save and restore both),
and its learning rate and update count are the inner optimizer's.
"""

from __future__ import annotations

import warnings
from typing import Any

import keras
from keras import ops


class OptimizerWrapper(keras.optimizers.Optimizer):
    """Base class: wrap the Keras optimizer ``optimizer``; subclasses implement ``apply``.

    Subclasses list their own constructor arguments in ``_config_keys`` (saved by ``get_config``) and
    start ``apply`` with :meth:`_gradients_and_variables`, which does what ``Optimizer.apply`` does
    before an update: build, drop ``None`` gradients (raising Keras's "No gradients provided" when all
    are ``None``), and overwrite the variables marked ``overwrite_with_gradient`` (float8 scaling
    factors) with their "gradient" instead of handing them to the optimizer.

    A wrapper that counts the inner optimizer's steps would count micro-batches around a
    :class:`~kexue.keras.GradientAccumulation`, which applies an update only every n calls: wrapping one
    is refused; put the accumulation outermost instead.
    """

    _config_keys: tuple[str, ...] = ()
    _updates_every_step = True  # False for a wrapper that applies an update only every n-th call

    def __init__(self, optimizer: keras.optimizers.Optimizer, name: str | None = None, **kwargs: Any):
        if not isinstance(optimizer, keras.optimizers.Optimizer):
            raise TypeError(f"`optimizer` must be a keras.optimizers.Optimizer instance, got {type(optimizer).__name__}")
        if kwargs:
            raise ValueError(
                f"{type(self).__name__} takes no optimizer arguments ({', '.join(kwargs)}); set them on `optimizer`"
            )
        if not getattr(optimizer, "_updates_every_step", True):
            raise ValueError(
                f"`optimizer` is a {type(optimizer).__name__}, which updates once every {optimizer.steps} calls, "
                f"so {type(self).__name__} would count micro-batches, not updates; put the accumulation "
                f"outermost: {type(optimizer).__name__}({type(self).__name__}(inner), ...)"
            )
        if keras.backend.backend() == "jax":
            raise NotImplementedError(f"{type(self).__name__} supports the tensorflow and torch backends, not jax")
        super().__init__(learning_rate=0.0, name=name)
        self.inner_optimizer = optimizer

    def build(self, var_list: list[keras.Variable]) -> None:
        self.inner_optimizer.build(var_list)
        super().build(var_list)

    @property
    def variables(self) -> list[keras.Variable]:
        return self._variables + self.inner_optimizer.variables

    @property
    def iterations(self) -> Any:
        """The inner optimizer's count of applied updates, which its learning-rate schedule uses."""
        return self.inner_optimizer.iterations

    @property
    def learning_rate(self) -> Any:
        return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, learning_rate: Any) -> None:
        # The base constructor assigns a placeholder before `inner_optimizer` exists.
        if hasattr(self, "inner_optimizer"):
            self.inner_optimizer.learning_rate = learning_rate

    def _gradients_and_variables(
        self, grads: list[Any], trainable_variables: list[keras.Variable] | None
    ) -> tuple[list[Any], list[keras.Variable]]:
        """Build on first use; return the (gradient, variable) pairs left for the optimizer.

        As ``keras.optimizers.Optimizer.apply`` does: ``None`` gradients are dropped with a warning
        (all ``None``: ``ValueError``), and variables with ``overwrite_with_gradient`` are handed to
        :meth:`_overwrite_with_gradients` and left out. An empty list of gradients is a no-op.
        """
        if not self.built:
            with keras.name_scope(self.name, caller=self):
                self.build(trainable_variables)
        variables = list(trainable_variables) if trainable_variables is not None else self._trainable_variables
        if len(grads) != len(variables):
            raise ValueError(f"got {len(grads)} gradients for {len(variables)} variables")
        if not grads:
            return [], []
        missing = [getattr(v, "path", v.name) for g, v in zip(grads, variables) if g is None]
        pairs = [(g, v) for g, v in zip(grads, variables) if g is not None]
        if not pairs:
            raise ValueError("No gradients provided for any variable.")
        if missing:
            warnings.warn(f"Gradients do not exist for variables {missing} when minimizing the loss.", stacklevel=3)
        overwrite = [(g, v) for g, v in pairs if getattr(v, "overwrite_with_gradient", False)]
        if overwrite:
            self._overwrite_with_gradients([g for g, _ in overwrite], [v for _, v in overwrite])
            pairs = [(g, v) for g, v in pairs if not getattr(v, "overwrite_with_gradient", False)]
        return [g for g, _ in pairs], [v for _, v in pairs]

    def _overwrite_with_gradients(self, grads: list[Any], variables: list[keras.Variable]) -> None:
        """Set each ``overwrite_with_gradient`` variable to its gradient, as Keras's optimizers do."""
        for g, v in zip(grads, variables):
            v.assign(g)

    def finalize_variable_values(self, var_list: list[keras.Variable]) -> None:
        self.inner_optimizer.finalize_variable_values(var_list)

    def get_config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "optimizer": keras.saving.serialize_keras_object(self.inner_optimizer),
            **{key: getattr(self, key) for key in self._config_keys},
        }

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects: dict[str, Any] | None = None) -> "OptimizerWrapper":
        config = dict(config)
        optimizer = keras.saving.deserialize_keras_object(config.pop("optimizer"), custom_objects=custom_objects)
        return cls(optimizer, **config)
