"""Device hygiene: the quantiser, the samplers and the optimizer wrappers run with model and data on DEVICE.

DEVICE is ``kexue.device()``: the CPU here, the GPU on a CUDA runner (the GitHub workflow's GPU job runs
this file), where a tensor left on the host, an index tensor moved to the CPU, or a generator on the
wrong device raises. Every result must come back on DEVICE; the samplers must be repeatable from a
generator on DEVICE and must leave the global RNG alone; and the float computations that choose a code
or a sample must give the float32 answer under autocast.
"""

import copy

import pytest
import torch
from torch import nn

import kexue
from kexue.energy import langevin, mala
from kexue.torch import (VQVAE, ExponentialMovingAverage, FiniteScalarQuantizer, GradientAccumulation, LazyAdam,
                         Lookahead, PixelCNNPrior, VectorQuantizer, gumbel_max, gumbel_softmax, nearest_code,
                         sample_gumbel)

DEVICE = kexue.device()
AUTOCAST = torch.bfloat16  # the dtype autocast supports on the CPU and on every CUDA device


def on_device(*tensors: torch.Tensor) -> bool:
    return all(t.device.type == DEVICE.type for t in tensors)


def tensors_in(tree) -> list[torch.Tensor]:
    """Every non-scalar tensor in a (nested) state dict."""
    if isinstance(tree, torch.Tensor):
        return [tree] if tree.ndim > 0 else []
    if isinstance(tree, dict):
        return [t for value in tree.values() for t in tensors_in(value)]
    if isinstance(tree, (list, tuple)):
        return [t for value in tree for t in tensors_in(value)]
    return []


def generator(seed: int) -> torch.Generator:
    return torch.Generator(device=DEVICE).manual_seed(seed)


@pytest.mark.parametrize("ema_decay, restarts", [(None, None), (0.9, 0.5)])
def test_quantizer_trains_and_encodes_on_device(ema_decay, restarts):
    torch.manual_seed(0)
    quantizer = VectorQuantizer(16, 4, ema_decay=ema_decay, dead_code_threshold=restarts).to(DEVICE)
    z = torch.randn(8, 4, 3, 3, device=DEVICE, requires_grad=True)
    out = quantizer(z)
    assert on_device(*[t for t in out if isinstance(t, torch.Tensor)], *quantizer.state_dict().values())
    out[0].sum().backward()
    assert on_device(z.grad)
    model = VQVAE(VectorQuantizer(16, 8, ema_decay=ema_decay, dead_code_threshold=restarts), hidden=8).to(DEVICE)
    indices = model.encode_indices(torch.rand(10, 1, 8, 8, device=DEVICE), batch_size=4)
    assert on_device(indices) and indices.dtype == torch.long


def test_nearest_code_under_autocast_is_the_float32_answer():
    torch.manual_seed(1)
    z, codebook = torch.randn(512, 8, device=DEVICE), torch.randn(64, 8, device=DEVICE)
    exact = nearest_code(z, codebook)
    with torch.autocast(DEVICE.type, dtype=AUTOCAST):
        quantizer = VectorQuantizer(64, 8).to(DEVICE).eval()
        quantizer.codebook.data.copy_(codebook)
        out = quantizer(z.reshape(512, 8, 1, 1))
    assert on_device(exact, out.indices)
    assert torch.equal(out.indices.reshape(-1), exact)  # bf16 scores would pick other codes for close pairs


def test_fsq_and_the_prior_sample_on_device():
    fsq = FiniteScalarQuantizer([5, 5, 4]).to(DEVICE)
    out = fsq(torch.randn(4, 3, 2, 2, device=DEVICE))
    assert on_device(*[t for t in out if isinstance(t, torch.Tensor)])
    prior = PixelCNNPrior(num_codes=6, height=3, width=3, hidden=8, layers=2).to(DEVICE)
    before = torch.random.get_rng_state()
    first, again = prior.sample(5, generator=generator(3)), prior.sample(5, generator=generator(3))
    assert on_device(first) and torch.equal(first, again)
    assert torch.equal(torch.random.get_rng_state(), before)  # the global RNG is untouched


def test_gumbel_samplers_on_device_repeat_from_a_device_generator():
    logits = torch.randn(32, 7, device=DEVICE)
    before = torch.random.get_rng_state()
    for draw in (lambda g: gumbel_max(logits, generator=g), lambda g: gumbel_softmax(logits, 0.5, generator=g),
                 lambda g: gumbel_softmax(logits, 0.5, hard=True, generator=g),
                 lambda g: sample_gumbel((4, 3), device=DEVICE, generator=g)):
        first, again = draw(generator(4)), draw(generator(4))
        assert on_device(first) and torch.equal(first, again)
    assert torch.equal(torch.random.get_rng_state(), before)
    with torch.autocast(DEVICE.type, dtype=AUTOCAST):
        sample = gumbel_max(logits.to(AUTOCAST), generator=generator(5))
    assert on_device(sample)


def test_langevin_samplers_on_device():
    energy = nn.Sequential(nn.Linear(2, 16), nn.SiLU(), nn.Linear(16, 1), nn.Flatten(0)).to(DEVICE)
    x0 = torch.randn(64, 2, device=DEVICE)
    first = langevin(energy, x0, steps=5, step_size=0.01, generator=generator(6))
    again = langevin(energy, x0, steps=5, step_size=0.01, generator=generator(6))
    assert on_device(first) and torch.equal(first, again)
    x, rate = mala(energy, x0, steps=5, step_size=0.01, generator=generator(7))
    assert on_device(x) and 0.0 <= rate <= 1.0


def one_step(make_optimizer, steps: int = 4):
    torch.manual_seed(8)
    model = nn.Sequential(nn.Embedding(20, 4), nn.Flatten(), nn.Linear(8, 1)).to(DEVICE)
    optimizer = make_optimizer(model)
    x = torch.randint(20, (16, 2), device=DEVICE)
    for _ in range(steps):
        model(x).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    return model, optimizer


@pytest.mark.parametrize("name", ["accumulation", "lookahead", "lazy_adam", "lookahead_of_accumulation"])
def test_optimizer_wrappers_keep_their_state_on_device(name):
    makers = {
        "accumulation": lambda m: GradientAccumulation(torch.optim.Adam(m.parameters(), 1e-2), steps=2),
        "lookahead": lambda m: Lookahead(torch.optim.SGD(m.parameters(), 1e-2, momentum=0.9)),
        "lazy_adam": lambda m: LazyAdam(m.parameters(), lr=1e-2),
        "lookahead_of_accumulation": lambda m: GradientAccumulation(Lookahead(torch.optim.Adam(m.parameters(), 1e-2)),
                                                                    steps=2),
    }
    model, optimizer = one_step(makers[name])
    tensors = tensors_in(optimizer.state_dict())
    assert tensors and on_device(*tensors, *model.parameters())
    clone = copy.deepcopy(optimizer)  # a checkpointed copy keeps the device too
    assert on_device(*tensors_in(clone.state_dict()))


def test_weight_average_follows_the_model_to_the_device():
    model = nn.Linear(3, 2)
    ema = ExponentialMovingAverage(model, momentum=0.9)
    model.to(DEVICE)
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update()
    shadows = tensors_in(ema.state_dict())
    assert len(shadows) == 2 and on_device(*shadows)  # weight and bias; an empty list would pass on_device


@pytest.mark.skipif(DEVICE.type != "cuda", reason="host synchronisation is observable on a CUDA device only")
def test_hot_paths_make_no_host_synchronisation():
    """The training paths that claim no host round trip: torch raises on any synchronising call inside."""
    quantizer = VectorQuantizer(16, 4, ema_decay=0.9, dead_code_threshold=0.5).to(DEVICE)
    z, logits = torch.randn(8, 4, 3, 3, device=DEVICE), torch.randn(32, 7, device=DEVICE)
    quantizer(z)  # the first call may initialise lazily
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        quantizer(z)
        gumbel_softmax(logits, 0.5, hard=True, generator=generator(9), validate=False)
    finally:
        torch.cuda.set_sync_debug_mode("default")
