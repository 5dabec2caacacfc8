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
        model: a Keras model (any kind: functional, sequential, subclassed). An unbuilt model is first
            called once outside the recording, so that what its build pass records (symbolic tensors) is
            not returned.
        inputs: what ``model`` takes.
        layers: names of layers whose outputs to keep as ``"{name}:output"`` (and their first input as
            ``"{name}:input"``), searched at any depth (layers inside nested models and layers too); a name
            must be unique in the model.
        training: passed to the model (``False``: dropout off, BatchNorm in inference mode).
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"`model` must be a keras.Model, got {type(model).__name__}")
    if isinstance(layers, str):
        raise TypeError("`layers` must be a sequence of layer names, not one string: use layers=[name]")
    targets = [_find_layer(model, name) for name in layers]
    if not model.built:
        model(inputs, training=training)
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


def _find_layer(model: keras.Model, name: str) -> keras.layers.Layer:
    """The one layer called ``name`` at any depth of ``model``; ``ValueError`` if none or several."""
    found = [layer for layer in model._flatten_layers(include_self=False, recursive=True) if layer.name == name]
    if len(found) != 1:
        names = sorted({layer.name for layer in model._flatten_layers(include_self=False, recursive=True)})
        raise ValueError(f"`layers`: {'no' if not found else len(found)} layers named {name!r} in the model; "
                         f"layer names: {names[:30]}")
    return found[0]


def _tapped(layer: keras.layers.Layer, call: Any, values: dict[str, Any]) -> Any:
    def call_and_keep(*args: Any, **kwargs: Any) -> Any:
        out = call(*args, **kwargs)
        if args:
            store(values, f"{layer.name}:input", args[0])
        store(values, f"{layer.name}:output", out)
        return out

    return call_and_keep
