"""Chapter 03 in PyTorch: capture, ExponentialMovingAverage, SeededDataset; and kexue.seeded."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Dataset

from kexue.seeded import epoch_order, key_words, sample_rng
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
    other = ExponentialMovingAverage(small_net(), momentum=0.9)
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


def test_sample_rng_keys_are_injective():
    """A flat SeedSequence key splits 2**32 + 5 into the words [5, 1], so (2**32 + 5, 7, 0) was (5, 1, 7)."""
    for a, b in [((2**32 + 5, 7, 0), (5, 1, 7)), ((0, 2**32, 0), (0, 0, 1)), ((2**64, 0, 0), (0, 0, 0))]:
        assert not np.array_equal(sample_rng(*a).integers(2**62, size=4), sample_rng(*b).integers(2**62, size=4))
    assert key_words(0, 2**32 + 5, 7) == [0, 2, 5, 1, 1, 7]
    assert len({tuple(key_words(0, s, e, i)) for s in (0, 1, 2**32, 2**32 + 1) for e in (0, 1, 2**32)
                for i in (0, 1, 2**33)}) == 36


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


def test_load_state_dict_keeps_the_momentum_and_checks_shapes():
    model = small_net()
    ema = ExponentialMovingAverage(model, momentum=0.9)
    train(model, 3, [ema.update])
    with pytest.raises(ValueError, match="momentum"):  # it used to replace 0.5 by 0.9 silently
        ExponentialMovingAverage(small_net(), momentum=0.5).load_state_dict(ema.state_dict())
    wrong = ema.state_dict()
    wrong["shadow"][0] = wrong["shadow"][0].T.contiguous()  # (6, 12) for a (12, 6) weight: same numel
    with pytest.raises(ValueError, match="shape"):
        ExponentialMovingAverage(small_net(), momentum=0.9).load_state_dict(wrong)
    with pytest.raises(ValueError, match="keys"):
        ema.load_state_dict({"shadow": []})


def test_bfloat16_parameters_get_a_float32_average_that_moves():
    model = nn.Linear(3, 2).to(torch.bfloat16)
    ema = ExponentialMovingAverage(model, momentum=0.999)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    ema.update()  # the copy: 0
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1.0)
    for _ in range(100):
        ema.update()
    expected = 1 - 0.999**100  # eq. ema-closed-form: weight (1 - beta) beta^(t-i) on each of the 100 ones
    for s in ema.shadow:
        assert s.dtype == torch.float32 and torch.allclose(s, torch.full_like(s, expected), rtol=1e-5)
    with ema.swapped():
        assert all(p.dtype == torch.bfloat16 and torch.equal(p, s.to(torch.bfloat16))
                   for p, s in zip(model.parameters(), ema.shadow))
    assert all(torch.equal(p, torch.ones_like(p)) for p in model.parameters())


def test_shadows_follow_the_model_to_another_device():
    model = small_net()
    ema = ExponentialMovingAverage(model, momentum=0.9)
    ema.update()
    model.to("meta")  # a device other than the CPU that every machine has
    ema.update()
    assert all(s.device.type == "meta" for s in ema.shadow)
    with ema.swapped():
        pass
    ema.load_state_dict({"momentum": 0.9, "updates": 1, "shadow": [torch.zeros(s.shape) for s in ema.shadow]})
    assert all(s.device.type == "meta" for s in ema.shadow)


def test_parameters_unfrozen_after_construction_are_averaged_as_averaged_model_does():
    # fine-tuning: the first layer is frozen when the average is made and unfrozen later. The average used to
    # track only the parameters that required a gradient at construction and never saw the unfrozen ones.
    model = small_net()
    for p in model[0].parameters():
        p.requires_grad_(False)
    ours = ExponentialMovingAverage(model, momentum=0.9)
    reference = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9))
    train(model, 5, [ours.update, lambda: reference.update_parameters(model)])  # first layer frozen
    for p in model[0].parameters():
        p.requires_grad_(True)
    train(model, 10, [ours.update, lambda: reference.update_parameters(model)])  # and now trained
    assert len(ours.shadow) == len(list(model.parameters()))
    for a, b in zip(ours.shadow, reference.module.parameters()):
        assert torch.equal(a, b)
    raw_first = model[0].weight.detach().clone()
    with ours.swapped():
        assert torch.equal(model[0].weight, reference.module[0].weight)
    assert torch.equal(model[0].weight, raw_first)


def power_profile(gamma, t):
    """eq. power-profile: the weight of iterate i = 1..t in the t-th power-function average."""
    i = np.arange(1, t + 1, dtype=np.float64)
    return (i ** (gamma + 1) - (i - 1) ** (gamma + 1)) / t ** (gamma + 1)


@pytest.mark.parametrize("gamma", [0.0, 1.0, 6.94])
def test_power_function_average_has_the_derived_profile(gamma):
    model = nn.Linear(3, 2).double()
    ema = ExponentialMovingAverage(model, gamma=gamma)
    iterates = []
    g = torch.Generator().manual_seed(0)
    for _ in range(40):
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
        iterates.append([p.detach().clone() for p in model.parameters()])
        ema.update()
    weights = power_profile(gamma, 40)
    assert abs(weights.sum() - 1) < 1e-12
    for k, s in enumerate(ema.shadow):
        expected = sum(w * step[k] for w, step in zip(weights, iterates))
        assert torch.allclose(s, expected, rtol=0, atol=1e-12)
    assert ema.momentum_at(1) == 0 and abs(ema.momentum_at(4) - 0.75 ** (gamma + 1)) < 1e-15


def test_power_function_average_with_gamma_zero_is_the_swa_average():
    model = small_net().double()
    ours = ExponentialMovingAverage(model, gamma=0)
    reference = AveragedModel(model)  # its default: the uniform (SWA) average
    train_double = [ours.update, lambda: reference.update_parameters(model)]
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    g = torch.Generator().manual_seed(1)
    for _ in range(30):
        x, y = torch.randn(16, 6, generator=g).double(), torch.randn(16, 1, generator=g).double()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        opt.zero_grad()
        for hook in train_double:
            hook()
    for a, b in zip(ours.shadow, reference.module.parameters()):
        assert torch.allclose(a, b, rtol=0, atol=1e-13)


def test_power_function_average_validates_and_round_trips():
    model = small_net()
    for bad in (-0.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="gamma"):
            ExponentialMovingAverage(model, gamma=bad)
    with pytest.raises(TypeError, match="gamma"):
        ExponentialMovingAverage(model, gamma=True)
    with pytest.raises(ValueError, match="not both"):
        ExponentialMovingAverage(model, momentum=0.9, gamma=1.0)
    with pytest.raises(ValueError, match="t"):
        ExponentialMovingAverage(model, gamma=1.0).momentum_at(0)
    ema = ExponentialMovingAverage(model, gamma=3.0)
    train(model, 4, [ema.update])
    other = ExponentialMovingAverage(small_net(), gamma=3.0)
    other.load_state_dict(ema.state_dict())
    assert other.updates == 4 and all(torch.equal(a, b) for a, b in zip(other.shadow, ema.shadow))
    with pytest.raises(ValueError, match="gamma"):
        ExponentialMovingAverage(small_net(), gamma=2.0).load_state_dict(ema.state_dict())
    with pytest.raises(ValueError, match="gamma"):
        ExponentialMovingAverage(small_net(), momentum=0.9).load_state_dict(ema.state_dict())


def test_refuses_a_model_without_float_parameters_a_swap_before_any_update_and_bad_update_counts():
    class Counter(nn.Module):  # an integer parameter only: nothing to average
        def __init__(self):
            super().__init__()
            self.count = nn.Parameter(torch.zeros(3, dtype=torch.int64), requires_grad=False)

    with pytest.raises(ValueError, match="no floating-point parameters"):  # used to fail later, inside update()
        ExponentialMovingAverage(Counter())
    model = small_net()
    ema = ExponentialMovingAverage(model, momentum=0.9)
    with pytest.raises(RuntimeError, match="nothing to swap in"):  # used to swap in the construction-time copy
        with ema.swapped():
            pass
    train(model, 2, [ema.update])
    for updates, error in ((-3, ValueError), (1.5, TypeError), (True, TypeError)):
        state = ema.state_dict()
        state["updates"] = updates
        with pytest.raises(error, match="updates"):  # -3 used to be accepted
            ExponentialMovingAverage(model, momentum=0.9).load_state_dict(state)
