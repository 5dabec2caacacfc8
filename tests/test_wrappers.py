"""What the shared wrapper bases give every wrapper (kexue.torch.wrapper, kexue.keras.wrapper).

Torch: copy.deepcopy, pickle and torch.save(opt) keep the whole wrapper and resume exactly; the state-dict
hooks of torch.optim.Optimizer run. Keras: all-None gradients raise as Keras does, variables marked
``overwrite_with_gradient`` are overwritten (with the maximum over a cycle under accumulation, as Keras's
own accumulation does), and wrapping a GradientAccumulation is refused. The last test re-runs the module
under the other Keras backend.
"""

import copy
import io
import os
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras  # noqa: E402

from kexue import keras as kk  # noqa: E402
from kexue import torch as kt  # noqa: E402
from tests.keras_backends import only_once, rerun_under_other_backend  # noqa: E402

BACKEND = keras.backend.backend()

# --- torch ---------------------------------------------------------------------------------------------

TORCH_WRAPPERS = {
    "accumulation": lambda p: kt.GradientAccumulation(torch.optim.Adam(p, 1e-2), 4),
    "lookahead": lambda p: kt.Lookahead(torch.optim.Adam(p, 1e-2), sync_period=3),
    "accumulated lookahead": lambda p: kt.GradientAccumulation(kt.Lookahead(torch.optim.Adam(p, 1e-2), 3), 2),
    "lazy adam": lambda p: kt.LazyAdam(p, 1e-2),  # a plain optimizer, for completeness
}


def torch_setup(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 2)).double()


def torch_data(n):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 5, generator=g, dtype=torch.float64), torch.randint(0, 2, (n,), generator=g)


def torch_train(model, opt, x, y):
    for start in range(0, len(x), 8):
        F.cross_entropy(model(x[start:start + 8]), y[start:start + 8]).backward()
        opt.step()
        opt.zero_grad()


def torch_copies(model, opt):
    yield "deepcopy", copy.deepcopy((model, opt))
    yield "pickle", pickle.loads(pickle.dumps((model, opt)))
    buffer = io.BytesIO()
    torch.save((model, opt), buffer)
    buffer.seek(0)
    yield "torch.save", torch.load(buffer, weights_only=False)


@pytest.mark.parametrize("name", TORCH_WRAPPERS)
def test_torch_copies_resume_exactly(name):
    x, y = torch_data(112)
    model = torch_setup()
    opt = TORCH_WRAPPERS[name](model.parameters())
    torch_train(model, opt, x[:56], y[:56])  # 7 micro-batches: mid-cycle and between synchronisations
    copies = list(torch_copies(model, opt))
    torch_train(model, opt, x[56:], y[56:])
    for how, (m, o) in copies:
        assert type(o) is type(opt) and o.param_groups is getattr(o, "optimizer", o).param_groups, how
        assert all(p is q for p, q in zip(m.parameters(), o.param_groups[0]["params"])), how
        torch_train(m, o, x[56:], y[56:])
        assert max((p - q).abs().max().item() for p, q in zip(model.parameters(), m.parameters())) == 0.0, how


@pytest.mark.parametrize("name", [n for n in TORCH_WRAPPERS if n != "lazy adam"])
def test_torch_state_dict_hooks_run(name):
    model = torch_setup()
    opt = TORCH_WRAPPERS[name](model.parameters())
    calls = []
    opt.register_state_dict_pre_hook(lambda o: calls.append("save pre"))
    opt.register_state_dict_post_hook(lambda o, sd: {**sd, "note": "kept"})
    opt.register_load_state_dict_pre_hook(lambda o, sd: {k: v for k, v in sd.items() if k != "note"})
    opt.register_load_state_dict_post_hook(lambda o: calls.append("load post"))
    state = opt.state_dict()
    assert state["note"] == "kept"
    opt.load_state_dict(state)
    assert calls == ["save pre", "load post"]


def test_torch_wrapping_an_accumulation_is_refused():
    params = list(torch_setup().parameters())
    with pytest.raises(ValueError, match="outermost"):
        kt.Lookahead(kt.GradientAccumulation(torch.optim.SGD(params, lr=0.1), 2))


# --- Keras ---------------------------------------------------------------------------------------------

KERAS_WRAPPERS = {
    "accumulation": lambda opt: kk.GradientAccumulation(opt, 4),
    "lookahead": lambda opt: kk.Lookahead(opt, sync_period=2, slow_step_size=0.5),
    "lazy": lambda opt: kk.LazyOptimizer(opt, lazy_variables=("w",)),
}


def keras_variables():
    w = keras.Variable(np.ones((3, 2), "float32"), name="w")
    s = keras.Variable(np.zeros(2, "float32"), name="scale")
    s.overwrite_with_gradient = True  # as float8 layers mark their scaling factors
    return w, s


def keras_grads(k):
    rng = np.random.default_rng(k)
    as_tensor = keras.ops.convert_to_tensor
    return as_tensor(rng.standard_normal((3, 2)).astype("float32")), as_tensor(rng.standard_normal(2).astype("float32"))


@pytest.mark.parametrize("name", KERAS_WRAPPERS)
def test_keras_all_none_gradients_raise_like_keras(name):
    w, s = keras_variables()
    opt = KERAS_WRAPPERS[name](keras.optimizers.SGD(0.1))
    with pytest.raises(ValueError, match="No gradients provided for any variable"):
        opt.apply([None, None], [w, s])
    with pytest.raises(ValueError, match="No gradients provided for any variable"):
        keras.optimizers.SGD(0.1).apply([None, None], [w, s])  # the behaviour matched
    with pytest.warns(UserWarning, match="Gradients do not exist"):
        opt.apply([keras_grads(0)[0], None], [w, s])


@pytest.mark.parametrize("name", ["lookahead", "lazy"])
def test_keras_overwrite_with_gradient_variables_take_the_gradient(name):
    """Not an input to the optimizer (nor to Lookahead's slow weights): the variable becomes its gradient."""
    w, s = keras_variables()
    opt = KERAS_WRAPPERS[name](keras.optimizers.SGD(0.1, momentum=0.9))
    for k in range(4):  # two synchronisations of Lookahead
        gw, gs = keras_grads(k)
        opt.apply([gw, gs], [w, s])
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(s), keras.ops.convert_to_numpy(gs))


def test_keras_accumulation_keeps_the_maximum_of_overwrite_values_like_keras():
    ours_vars, builtin_vars = keras_variables(), keras_variables()
    ours = kk.GradientAccumulation(keras.optimizers.SGD(0.1), 4)
    builtin = keras.optimizers.SGD(0.1, gradient_accumulation_steps=4)
    seen = []
    for k in range(10):
        gw, gs = keras_grads(k)
        seen.append(keras.ops.convert_to_numpy(gs))
        ours.apply([gw, gs], list(ours_vars))
        builtin.apply([gw, gs], list(builtin_vars))
        for a, b in zip(ours_vars, builtin_vars):
            np.testing.assert_allclose(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b), rtol=0, atol=1e-7)
        if k % 4 == 3:  # an update: the largest value of the cycle, floored at the zero start of the slot
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(ours_vars[1]), np.maximum(np.max(seen[-4:], axis=0), 0))
    assert int(ours.iterations) == 2


@pytest.mark.parametrize("outer", ["lookahead", "lazy", "accumulation"])
def test_keras_wrapping_an_accumulation_is_refused(outer):
    inner = kk.GradientAccumulation(keras.optimizers.SGD(0.1), 2)
    with pytest.raises(ValueError, match="outermost|already accumulates|must be one of"):
        KERAS_WRAPPERS[outer](inner)


@only_once
def test_the_other_backend():
    rerun_under_other_backend(__file__, BACKEND)
