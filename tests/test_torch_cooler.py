"""Chapter 03 in PyTorch: capture, ExponentialMovingAverage, SeededDataset; and kexue.seeded."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Dataset

from kexue.seeded import epoch_order, sample_rng
from kexue.torch import ExponentialMovingAverage, SeededDataset, SelfAttention, capture, loader_batches


def test_capture_gives_the_attention_matrix_and_module_outputs_and_removes_its_hooks():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), SelfAttention(8, 6, name="att"), nn.Linear(6, 2))
    x = torch.randn(3, 5, 4)
    out, values = capture(model, x, modules=["0"])
    assert set(values) == {"0:input", "0:output", "att/attention"}
    h, att = values["0:output"], model[1]
    scores = att.query(h) @ att.key(h).transpose(1, 2) / np.sqrt(6)
    assert torch.allclose(values["att/attention"], torch.softmax(scores, -1), atol=1e-6)
    assert torch.allclose(values["att/attention"].sum(-1), torch.ones(3, 5), atol=1e-6)
    assert torch.equal(out, model(x).detach()) and not out.requires_grad
    assert not model[0]._forward_hooks
    with pytest.raises(ValueError, match="no submodule"):
        capture(model, x, modules=["9"])
    with pytest.raises(TypeError, match="sequence of module names"):
        capture(model, x, modules="0")
    with pytest.raises(ValueError, match="batch, length, features"):
        model[1](torch.randn(5, 8))


def small_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Linear(12, 1))


def train(model, steps, hooks):
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(16, 6, generator=g), torch.randn(16, 1, generator=g)
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        opt.zero_grad()
        for hook in hooks:
            hook()


def test_ema_matches_averaged_model_with_the_ema_multi_avg_fn():
    model = small_net()
    ours = ExponentialMovingAverage(model, momentum=0.9)
    reference = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9))
    train(model, 25, [ours.update, lambda: reference.update_parameters(model)])
    for a, b in zip(ours.shadow, reference.module.parameters()):
        assert torch.equal(a, b)


def test_swapped_restores_parameters_exactly_and_leaves_buffers():
    model = small_net()
    ema = ExponentialMovingAverage(model, momentum=0.9)
    train(model, 10, [ema.update])
    raw = [p.clone() for p in model.parameters()]
    buffers = [b.clone() for b in model.buffers()]
    with ema.swapped():
        assert all(torch.equal(p, s) for p, s in zip(model.parameters(), ema.shadow))
        assert all(torch.equal(b, c) for b, c in zip(model.buffers(), buffers))
    assert all(torch.equal(p, r) for p, r in zip(model.parameters(), raw))
    state = ema.state_dict()
    other = ExponentialMovingAverage(small_net(), momentum=0.5)
    other.load_state_dict(state)
    assert other.momentum == 0.9 and other.updates == 10 and all(torch.equal(a, b) for a, b in zip(other.shadow, ema.shadow))
    with pytest.raises(ValueError):
        ExponentialMovingAverage(model, momentum=1.0)
    with pytest.raises(TypeError):
        ExponentialMovingAverage([1.0])


def noise(sample, rng):
    return sample + rng.normal(size=sample.shape).astype("float32")


class NaiveDataset(Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return torch.as_tensor(noise(self.x[i], np.random)), torch.as_tensor(self.y[i])


def read(dataset, workers):
    np.random.seed(0)
    loader = DataLoader(dataset, batch_size=16, shuffle=True, num_workers=workers,
                        generator=torch.Generator().manual_seed(0))
    return loader_batches(loader, epochs=3)


def same(a, b):
    return all(np.array_equal(u[0], v[0]) and np.array_equal(u[1], v[1]) for p, q in zip(a, b) for u, v in zip(p, q))


X, Y = np.zeros((50, 3), "float32"), np.arange(50)


def test_seeded_dataset_batches_do_not_depend_on_workers_and_naive_ones_do():
    seeded = SeededDataset(X, Y, noise, seed=0)
    reference = read(seeded, 0)
    assert all(sorted(np.concatenate([b[1] for b in epoch]).tolist()) == list(range(50)) for epoch in reference)
    assert same(read(seeded, 2), reference)
    naive = NaiveDataset(X, Y)
    assert not same(read(naive, 2), read(naive, 0))


def test_seeded_generators_are_keyed_and_validated():
    a, b = sample_rng(1, 2, 3).normal(size=4), sample_rng(1, 2, 3).normal(size=4)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, sample_rng(1, 2, 4).normal(size=4))
    assert not np.array_equal(a, sample_rng(1, 3, 3).normal(size=4))
    assert np.array_equal(np.sort(epoch_order(10, 0, 1)), np.arange(10))
    assert not np.array_equal(epoch_order(10, 0, 1), epoch_order(10, 0, 2))
    with pytest.raises(ValueError):
        sample_rng(0, -1, 0)
    with pytest.raises(ValueError, match="same length"):
        SeededDataset(np.zeros(3), np.zeros(2))
    with pytest.raises(ValueError):
        SeededDataset(X, Y).set_epoch(-1)
