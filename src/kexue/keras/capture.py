"""Capture intermediate values of a Keras 3 model in one eager call (chapter 03).

Keras 2's trick (a backend function whose output is a tensor stored on a layer) has no Keras 3
equivalent: there is no global graph to pull a tensor from. Instead the model is called once, eagerly,
while two kinds of value are collected: what layers mark with :func:`kexue.capture.record` inside their
``call``, and the outputs of layers named in ``layers``. Weights are not touched and nothing is rebuilt.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

from kexue.capture import record, recording, store

__all__ = ["capture", "record"]


def capture(model: keras.Model, inputs: Any, layers: Sequence[str] = (),
            training: bool = False) -> tuple[Any, dict[str, np.ndarray]]:
    """Call ``model(inputs, training=training)`` once; return (outputs, captured values as NumPy arrays).

    Args:
        model: a built Keras model (any kind: functional, sequential, subclassed).
        inputs: what ``model`` takes.
        layers: names of layers (found with ``model.get_layer``) whose outputs to keep as ``"{name}:output"``
            (and their first input as ``"{name}:input"``).
        training: passed to the model (``False``: dropout off, BatchNorm in inference mode).
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"`model` must be a keras.Model, got {type(model).__name__}")
    if isinstance(layers, str):
        raise TypeError("`layers` must be a sequence of layer names, not one string: use layers=[name]")
    targets = [model.get_layer(name) for name in layers]  # raises ValueError naming an unknown layer
    originals = []
    with recording() as values:
        try:
            for layer in targets:
                originals.append(layer.__dict__.get("call"))
                object.__setattr__(layer, "call", _tapped(layer, type(layer).call.__get__(layer), values))
            outputs = model(inputs, training=training)
        finally:
            for layer, original in zip(targets, originals):
                if original is None:
                    object.__delattr__(layer, "call")
                else:
                    object.__setattr__(layer, "call", original)
    return outputs, {name: keras.ops.convert_to_numpy(v) for name, v in values.items()}


def _tapped(layer: keras.layers.Layer, call: Any, values: dict[str, Any]) -> Any:
    def call_and_keep(*args: Any, **kwargs: Any) -> Any:
        out = call(*args, **kwargs)
        if args:
            store(values, f"{layer.name}:input", args[0])
        store(values, f"{layer.name}:output", out)
        return out

    return call_and_keep
