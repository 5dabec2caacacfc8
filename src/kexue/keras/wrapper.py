"""The part every kexue Keras optimizer wrapper shares: holding, building, saving an inner optimizer.

Modelled on ``keras.optimizers.LossScaleOptimizer``: the wrapper is itself a Keras optimizer, its
``variables`` are its own followed by the inner optimizer's (so ``.keras`` files save and restore both),
and its learning rate and update count are the inner optimizer's.
"""

from __future__ import annotations

from typing import Any

import keras


class OptimizerWrapper(keras.optimizers.Optimizer):
    """Base class: wrap the Keras optimizer ``optimizer``; subclasses implement ``apply``.

    Subclasses list their own constructor arguments in ``_config_keys`` (saved by ``get_config``).
    """

    _config_keys: tuple[str, ...] = ()

    def __init__(self, optimizer: keras.optimizers.Optimizer, name: str | None = None, **kwargs: Any):
        if not isinstance(optimizer, keras.optimizers.Optimizer):
            raise TypeError(f"`optimizer` must be a keras.optimizers.Optimizer instance, got {type(optimizer).__name__}")
        if kwargs:
            raise ValueError(
                f"{type(self).__name__} takes no optimizer arguments ({', '.join(kwargs)}); set them on `optimizer`"
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
        """Build on first use, then return the (gradient, variable) pairs whose gradient is not None."""
        if not self.built:
            with keras.name_scope(self.name, caller=self):
                self.build(trainable_variables)
        variables = list(trainable_variables) if trainable_variables is not None else self._trainable_variables
        if len(grads) != len(variables):
            raise ValueError(f"got {len(grads)} gradients for {len(variables)} variables")
        pairs = [(g, v) for g, v in zip(grads, variables) if g is not None]
        return [g for g, _ in pairs], [v for _, v in pairs]

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
