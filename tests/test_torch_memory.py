"""kexue.torch.memory: the activation and state accounting of chapter 01, eq. (memory-budget)."""

import pytest
import torch
from torch import nn

from kexue.torch import activation_bytes, state_bytes


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 5)).float()


def test_activation_bytes_counts_what_autograd_saves():
    model = mlp()
    x = torch.randn(16, 10)
    out, saved = activation_bytes(lambda: model(x), exclude=[*model.parameters(), x])
    # first Linear saves nothing but its input (excluded); ReLU saves its output (16x20);
    # the second Linear saves its input, the same ReLU output: counted once.
    assert saved == 16 * 20 * 4
    assert out.shape == (16, 5)
    _, with_input = activation_bytes(lambda: model(x), exclude=model.parameters())
    assert with_input == saved + 16 * 10 * 4


def test_activation_bytes_are_linear_in_the_batch():
    model = mlp()
    sizes = [activation_bytes(lambda n=n: model(torch.randn(n, 10)), exclude=model.parameters())[1] for n in (8, 32)]
    assert sizes[1] == 4 * sizes[0]


def test_state_bytes_of_adam():
    model = mlp()
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 10)).sum().backward()
    opt.step()
    params = sum(p.numel() for p in model.parameters()) * 4
    sizes = state_bytes(model, opt)
    steps = sum(s["step"].numel() * s["step"].element_size() for s in opt.state.values())
    assert sizes == {"parameters": params, "gradients": params, "optimizer": 2 * params + steps}
    with pytest.raises(TypeError, match="`model`"):
        state_bytes(opt)


def test_activation_bytes_wants_a_callable():
    with pytest.raises(TypeError, match="`forward` must be a callable"):
        activation_bytes(torch.ones(3))


def test_state_bytes_measures_what_the_optimizer_holds():
    """A wrapper's own buffers count (a P-sized one would show); the torch GradientAccumulation holds none."""
    from kexue.torch import GradientAccumulation

    model = mlp()
    opt = GradientAccumulation(torch.optim.Adam(model.parameters()), 4)
    for _ in range(4):  # one update: Adam's moments exist
        model(torch.randn(4, 10)).sum().backward()
        opt.step()
        opt.zero_grad()
    inner = state_bytes(model, opt.optimizer)
    assert state_bytes(model, opt) == inner and inner["optimizer"] > 2 * inner["parameters"]
    opt.buffer = [torch.zeros_like(p) for p in model.parameters()]  # what a summing wrapper would keep
    assert state_bytes(model, opt)["optimizer"] == inner["optimizer"] + inner["parameters"]
    with pytest.raises(TypeError, match="`optimizer`"):
        state_bytes(model, model)
