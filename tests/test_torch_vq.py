"""Chapter 08: vector quantiser, FSQ, the VQ-VAE and the PixelCNN prior."""

import json
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from kexue.torch import (VQVAE, FiniteScalarQuantizer, MaskedConv2d, PixelCNNPrior, VectorQuantizer,
                         codebook_perplexity, nearest_code, train_prior, train_vqvae)
from kexue.torch.pixelcnn import dependency_pattern
from kexue.torch.vq import kmeans


def brute_force_nearest(z, codebook):
    return ((z[:, None, :] - codebook[None, :, :]) ** 2).sum(-1).argmin(1)


@pytest.mark.parametrize("chunk_size", [1, 7, 100, 10_000])
def test_nearest_code_is_the_brute_force_argmin_for_any_chunk(chunk_size):
    g = torch.Generator().manual_seed(0)
    z, codes = torch.randn(300, 5, generator=g, dtype=torch.float64), torch.randn(37, 5, generator=g, dtype=torch.float64)
    assert torch.equal(nearest_code(z, codes, chunk_size), brute_force_nearest(z, codes))


def test_nearest_code_rejects_bad_shapes_and_mixed_dtypes():
    with pytest.raises(ValueError, match="dimension 4 but the codes have dimension 3"):
        nearest_code(torch.randn(5, 4), torch.randn(6, 3))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        nearest_code(torch.randn(5, 4, 1), torch.randn(6, 4))
    with pytest.raises(ValueError, match="share dtype"):
        nearest_code(torch.randn(5, 4), torch.randn(6, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="chunk_size"):
        nearest_code(torch.randn(5, 4), torch.randn(6, 4), chunk_size=0)


def test_quantizer_shapes_and_errors():
    vq = VectorQuantizer(16, 4)
    out = vq(torch.randn(2, 4, 3, 5))
    assert out.quantized.shape == (2, 4, 3, 5) and out.indices.shape == (2, 3, 5)
    assert torch.allclose(vq.lookup(out.indices), out.quantized, atol=1e-6)  # z + (e - z) rounds to e
    with pytest.raises(ValueError, match=r"\(batch, 4, \.\.\.\)"):
        vq(torch.randn(2, 3, 3, 5))
    for bad in (dict(beta=-1.0), dict(ema_decay=1.0), dict(ema_decay=1.5), dict(dead_code_threshold=0.0)):
        with pytest.raises(ValueError):
            VectorQuantizer(16, 4, **bad)
    with pytest.raises(TypeError):
        VectorQuantizer(16.0, 4)
    with pytest.raises(TypeError):
        vq.lookup(torch.zeros(2, 3))


def test_straight_through_copies_the_decoder_gradient_onto_the_encoder_output():
    torch.manual_seed(0)
    vq = VectorQuantizer(8, 3)
    z = torch.randn(4, 3, 2, 2, requires_grad=True)
    out = vq(z)
    out.quantized.retain_grad()
    weight = torch.randn(4, 3, 2, 2)
    (out.quantized * weight).sum().backward()
    assert torch.equal(z.grad, out.quantized.grad) and torch.equal(z.grad, weight)
    assert torch.allclose(out.quantized, vq.lookup(out.indices), atol=1e-6)


def test_codebook_loss_moves_only_codes_and_commitment_only_the_encoder():
    torch.manual_seed(0)
    encoder = torch.nn.Conv2d(2, 3, 1)
    vq = VectorQuantizer(8, 3)
    x = torch.randn(4, 2, 3, 3)
    for name, expect_codes, expect_encoder in (("codebook_loss", True, False), ("commitment_loss", False, True)):
        encoder.zero_grad()
        vq.zero_grad()
        getattr(vq(encoder(x)), name).backward()
        code_grad = vq.codebook.grad if vq.codebook.grad is not None else torch.zeros(1)
        enc_grad = encoder.weight.grad if encoder.weight.grad is not None else torch.zeros(1)
        assert (code_grad.abs().sum() > 0) == expect_codes, name
        assert (enc_grad.abs().sum() > 0) == expect_encoder, name


def test_ema_with_decay_zero_is_one_k_means_step_and_unused_codes_stay():
    torch.manual_seed(0)
    vq = VectorQuantizer(10, 2, ema_decay=0.0)
    before = vq.codebook.clone()
    z = torch.randn(50, 2)
    idx = nearest_code(z, before)
    vq(z[:, :, None])  # (50, 2, 1): 50 vectors at one position each
    for k in range(10):
        expected = z[idx == k].mean(0) if (idx == k).any() else before[k]
        assert torch.allclose(vq.codebook[k], expected, atol=1e-6), k
    assert vq.ema_decay == 0.0 and not isinstance(vq.codebook, torch.nn.Parameter)


def test_ema_without_assignment_changes_leaves_codes_at_cluster_means():
    vq = VectorQuantizer(3, 1, ema_decay=0.9)
    with torch.no_grad():
        vq.codebook.copy_(torch.tensor([[0.0], [10.0], [20.0]]))
    z = torch.tensor([[1.0], [-1.0], [11.0], [9.5]])[:, :, None]
    for _ in range(5):  # same assignments every call: the ratio m/N equals the cluster mean from the first call
        vq(z)
    assert torch.allclose(vq.codebook.flatten(), torch.tensor([0.0, 10.25, 20.0]))


def test_eval_mode_never_updates_the_codebook():
    vq = VectorQuantizer(10, 2, ema_decay=0.5, dead_code_threshold=1.0).eval()
    before = vq.codebook.clone()
    vq(torch.randn(20, 2, 1))
    assert torch.equal(before, vq.codebook) and vq.restarts == 0


def test_dead_codes_restart_onto_batch_vectors():
    torch.manual_seed(0)
    vq = VectorQuantizer(16, 2, dead_code_threshold=0.5, usage_decay=0.5)
    z = torch.randn(64, 2, 1) + 100.0  # far from every initial code: one code wins everything
    for _ in range(3):
        vq(z)
    assert vq.restarts > 0
    rows = z.squeeze(-1)
    moved = [k for k in range(16) if (vq.codebook[k] - rows).abs().sum(1).min() == 0]
    assert len(moved) >= 8
    assert codebook_perplexity(vq(z).indices, 16) > 4


def test_perplexity_is_k_for_uniform_use_and_one_for_a_single_code():
    assert math.isclose(codebook_perplexity(torch.arange(32).repeat(3), 32).item(), 32, rel_tol=1e-12)
    assert codebook_perplexity(torch.full((100,), 5), 32).item() == 1.0
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        codebook_perplexity(torch.tensor([4]), 4)
    with pytest.raises(TypeError):
        codebook_perplexity(torch.tensor([0.0]), 4)


def test_fsq_grid_indices_and_lookup_round_trip():
    fsq = FiniteScalarQuantizer((5, 4, 3))
    assert fsq.num_codes == 60 and fsq.dim == 3
    z = (torch.randn(8, 3, 6, 6) * 4).requires_grad_()
    out = fsq(z)
    assert out.indices.min() >= 0 and out.indices.max() < 60
    assert torch.allclose(fsq.lookup(out.indices), out.quantized, atol=1e-6)
    assert out.quantized.abs().max() <= 1 + 1e-6
    values = [torch.unique(out.quantized[:, c]).numel() for c in range(3)]
    assert values == [5, 4, 3]  # every level is reachable
    out.quantized.sum().backward()
    assert (z.grad > 0).all()  # straight-through round, sigmoid slope
    assert fsq.lookup(torch.arange(60)[:, None]).squeeze(-1).unique(dim=0).shape == (60, 3)  # 60 distinct points
    for bad in ((), (1, 4), "ab"):
        with pytest.raises((ValueError, TypeError)):
            FiniteScalarQuantizer(bad)


def strictly_lower(n):
    return torch.tril(torch.ones(n, n, dtype=torch.bool), diagonal=-1)


@pytest.mark.parametrize("height,width,layers,kernel_size", [(3, 4, 3, 3), (4, 4, 2, 5), (2, 5, 2, 5)])
def test_gated_prior_sees_every_earlier_position_and_nothing_else(height, width, layers, kernel_size):
    torch.manual_seed(0)
    prior = PixelCNNPrior(num_codes=5, height=height, width=width, hidden=8, layers=layers, kernel_size=kernel_size)
    pattern = dependency_pattern(prior, height, width, 5)
    assert torch.equal(pattern, strictly_lower(height * width))  # no leak, and no blind spot


def test_masked_stack_has_the_blind_spot_that_dependency_pattern_finds():
    class MaskedStack(torch.nn.Module):  # mask A 5x5, then two mask-B 3x3 layers: the old quick-scale prior
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(16, 8)
            self.convs = torch.nn.ModuleList([MaskedConv2d("A", 8, 8, 5), MaskedConv2d("B", 8, 8, 3),
                                              MaskedConv2d("B", 8, 8, 3)])
            self.head = torch.nn.Conv2d(8, 16, 1)

        def forward(self, grid):
            h = self.embed(grid).movedim(-1, 1)
            for conv in self.convs:
                h = conv(torch.relu(h))
            return self.head(h)

    torch.manual_seed(0)
    pattern = dependency_pattern(MaskedStack(), 4, 4, 16)
    lower = strictly_lower(16)
    assert not (pattern & ~lower).any()  # no leak
    unseen = [(divmod(i, 4), divmod(j, 4)) for i, j in (lower & ~pattern).nonzero().tolist()]
    assert ((1, 0), (0, 3)) in unseen  # (1, 0) cannot see the far end of the row above


def test_prior_checks_its_arguments_and_grids():
    with pytest.raises(ValueError, match="does not reach across a 4x4 grid"):
        PixelCNNPrior(num_codes=5, height=4, width=4, layers=2, kernel_size=3)
    with pytest.raises(ValueError, match="odd"):
        PixelCNNPrior(num_codes=5, height=2, width=2, kernel_size=4)
    with pytest.raises(ValueError, match="odd"):
        MaskedConv2d("A", 2, 2, 4)
    with pytest.raises(ValueError, match="mask_type"):
        MaskedConv2d("C", 2, 2, 3)
    prior = PixelCNNPrior(num_codes=5, height=3, width=4, hidden=8, layers=3)
    with pytest.raises(ValueError, match=r"\(batch, 3, 4\)"):
        prior(torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        prior(torch.full((1, 3, 4), 5))
    with pytest.raises(ValueError, match="temperature"):
        prior.sample(2, temperature=0.0)


def test_sampling_follows_the_generator_not_the_global_rng():
    torch.manual_seed(0)
    prior = PixelCNNPrior(num_codes=6, height=2, width=3, hidden=8, layers=2).eval()
    first = prior.sample(10, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(123)
    again = prior.sample(10, generator=torch.Generator().manual_seed(3))
    assert torch.equal(first, again) and first.dtype == torch.long and first.shape == (10, 2, 3)


def test_sampling_draws_the_first_position_from_its_softmax():
    torch.manual_seed(0)
    prior = PixelCNNPrior(num_codes=4, height=1, width=2, hidden=8, layers=1).eval()
    with torch.no_grad():
        probs = torch.softmax(prior(torch.zeros(1, 1, 2, dtype=torch.long))[0, :, 0, 0].double(), 0)
    samples = prior.sample(20_000, generator=torch.Generator().manual_seed(0))[:, 0, 0]
    counts = torch.bincount(samples, minlength=4).double()
    expected = 20_000 * probs
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    assert chi2 < 16.3  # chi-square, 3 degrees of freedom: 0.1% critical value


def test_prior_learns_a_deterministic_pattern_and_samples_it():
    torch.manual_seed(0)
    pattern = torch.tensor([[0, 1, 2], [3, 0, 1]])
    codes = torch.stack([pattern, (pattern + 1) % 4] * 64)
    prior = PixelCNNPrior(num_codes=4, height=2, width=3, hidden=16, layers=2)
    curve = train_prior(prior, codes, codes[:8], epochs=60, lr=3e-3)
    assert curve[-1][1] < 0.2 * curve[0][1] and curve[-1][1] < 1.0  # near log 2 nats: which of the two grids
    assert prior.nll(codes[:8]).mean().item() == pytest.approx(min(val for _, val in curve), rel=1e-5)  # best kept
    samples = prior.sample(20, generator=torch.Generator().manual_seed(0))
    ok = [(torch.equal(s, pattern) or torch.equal(s, (pattern + 1) % 4)) for s in samples]
    assert sum(ok) >= 18


def test_prior_early_stopping_keeps_the_best_validation_epoch():
    torch.manual_seed(0)
    codes = torch.randint(0, 6, (40, 2, 2))  # noise: the prior can only overfit
    prior = PixelCNNPrior(num_codes=6, height=2, width=2, hidden=32, layers=2)
    curve = train_prior(prior, codes[:30], codes[30:], epochs=25, lr=1e-2)
    best = min(range(25), key=lambda e: curve[e][1])
    assert best < 24 and curve[-1][1] > curve[best][1]  # it did overfit...
    assert prior.nll(codes[30:]).mean().item() == pytest.approx(curve[best][1], rel=1e-5)  # ...and the best is kept
    with pytest.raises(ValueError):
        train_prior(prior, codes, torch.zeros(3, 3, 3, dtype=torch.long), epochs=1)


def test_vqvae_trains_and_checks_image_shapes():
    torch.manual_seed(0)
    x = torch.rand(64, 1, 8, 8)
    model = VQVAE(VectorQuantizer(16, 4), hidden=8, downsample=1)
    history = train_vqvae(model, x, x[:16], epochs=3)
    assert set(history) == {"train_mse", "test_mse", "perplexity", "used_codes", "restarts"}
    assert not model.training
    scores = model.evaluate(x[:16], batch_size=5)  # batches of 5, 5, 5, 1 give the whole-set numbers
    with torch.no_grad():
        recon, q = model(x[:16])
    assert scores["mse"] == pytest.approx(F.mse_loss(recon, x[:16]).item(), rel=1e-5)
    assert scores["perplexity"] == pytest.approx(codebook_perplexity(q.indices, 16).item(), rel=1e-9)
    assert torch.equal(model.encode_indices(x[:16], batch_size=3), q.indices)
    assert torch.allclose(model.reconstruct(x[:16], batch_size=7), recon, atol=1e-6)
    assert model.encode_indices(x[:2]).shape == (2, 4, 4)
    assert model.decode_indices(model.encode_indices(x[:2])).shape == (2, 1, 8, 8)
    with pytest.raises(ValueError, match="divisible by 2"):
        model(torch.rand(1, 1, 7, 8))
    with pytest.raises(ValueError, match="batch, channels"):
        model(torch.rand(1, 8, 8))
    with pytest.raises(TypeError, match="quantizer"):
        VQVAE(torch.nn.Identity())


def test_quantizer_works_in_float64_and_ema_state_is_saved():
    vq = VectorQuantizer(4, 2, ema_decay=0.9).double()
    vq(torch.randn(3, 2, 2, dtype=torch.float64))  # training mode: an EMA step after the output is made
    assert {"codebook", "cluster_size", "code_sum", "usage"} <= set(vq.state_dict())
    assert vq.cluster_size.sum().item() == pytest.approx(0.1 * 6)
    out = vq.eval()(torch.randn(3, 2, 2, dtype=torch.float64))
    assert out.quantized.dtype == torch.float64
    assert F.mse_loss(out.quantized, vq.lookup(out.indices)).item() < 1e-20


FULL_SIZE_SCRIPT = """
import json, resource, sys, torch
from kexue.torch import VQVAE, PixelCNNPrior, VectorQuantizer
torch.manual_seed(0)
batch = int(sys.argv[1])
model = VQVAE(VectorQuantizer(512, 16, ema_decay=0.99), hidden=8, downsample=2)
prior = PixelCNNPrior(512, 7, 7, hidden=8, layers=6)
x = torch.rand(60_000, 1, 28, 28)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
codes = model.encode_indices(x, batch_size=batch)
scores = model.evaluate(x[:10_000], batch_size=batch)
nll = prior.mean_nll(codes, batch_size=batch)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps(dict(growth_mb=(peak - before) / 1024, data_mb=x.numel() * 4 / 2**20, shape=list(codes.shape))))
"""


def test_dataset_wide_passes_fit_a_t4_at_full_data_size():
    """encode_indices, evaluate and mean_nll over MNIST's 60,000 x 28 x 28 (K = 512, 7 x 7 grids), on CPU.

    Peak RSS growth is measured in a fresh process (ru_maxrss). Batched, it is a few batches' activations and
    logits (about 380 MB measured), whatever the data size; unbatched, the first convolution alone would need
    60,000 x 8 x 784 x 4 bytes = 1.4 GiB at this width (12 GB at the chapter's full VQ-VAE width of 64). The
    activations grow at most linearly with the width, so the growth times 128 / 8 (the prior's full width)
    plus the data must fit in half of a T4's 16 GB.
    """
    out = subprocess.run([sys.executable, "-c", FULL_SIZE_SCRIPT, "1024"], capture_output=True, text=True,
                         check=True, timeout=900)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["shape"] == [60_000, 7, 7]
    assert result["growth_mb"] < 1000, result  # unbatched: > 1,400 MB for one activation
    assert result["growth_mb"] * 128 / 8 + result["data_mb"] < 16_000 * 0.5, result  # half a T4 at width 128


def test_restarts_draw_distinct_batch_vectors_and_are_saved():
    torch.manual_seed(0)
    vq = VectorQuantizer(64, 3, dead_code_threshold=1.0, usage_decay=0.99)
    z = torch.randn(200, 3, 1) + 100.0  # far from every initial code: one code takes all, the rest die
    vq(z)
    assert vq.restarts == 63
    rows = z.squeeze(-1)
    matches = [(vq.codebook[k] == rows).all(1).nonzero().flatten().tolist() for k in range(64)]
    restarted = [m[0] for m in matches if m]
    assert len(restarted) == 63 and len(set(restarted)) == 63  # 63 distinct vectors: drawn without replacement
    state = vq.state_dict()
    assert int(state["restart_count"]) == 63
    fresh = VectorQuantizer(64, 3, dead_code_threshold=1.0, usage_decay=0.99)
    fresh.load_state_dict(state)
    assert fresh.restarts == 63 and torch.equal(fresh.codebook, vq.codebook)


def test_distance_search_is_float32_under_bfloat16_autocast():
    g = torch.Generator().manual_seed(0)
    z, codes = torch.randn(2000, 16, generator=g), torch.randn(256, 16, generator=g)
    exact = brute_force_nearest(z.double(), codes.double())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(nearest_code(z, codes), exact)
        vq = VectorQuantizer(256, 16).eval()
        vq.codebook.data.copy_(codes)
        zb = z.bfloat16()
        out = vq(zb[:, :, None])
    assert torch.equal(out.indices.flatten(), brute_force_nearest(zb.double(), codes.double()))


def test_long_unused_ema_code_stays_put():
    vq = VectorQuantizer(2, 2, ema_decay=0.9)
    with torch.no_grad():
        vq.codebook.copy_(torch.tensor([[0.0, 0.0], [20.0, 20.0]]))
    vq(torch.tensor([[[0.0, 20.0], [0.0, 20.0]]]))  # one vector at each code: both receive mass once
    z = torch.full((1, 2, 4), 0.1)
    for _ in range(1500):  # 0.9 ** 1500 * 0.1 underflows float32: N_k and m_k sink to subnormals
        vq(z)
    assert vq.cluster_size[1].item() < 1e-38  # subnormal (or 0): the ratio m_k / N_k would be rounding noise
    assert torch.equal(vq.codebook[1], torch.tensor([20.0, 20.0]))
    assert torch.allclose(vq.codebook[0], torch.tensor([0.1, 0.1]))


def test_kmeans_initialisation_from_the_first_batch():
    torch.manual_seed(0)
    centres = torch.tensor([[5.0, 5.0], [-5.0, 5.0], [5.0, -5.0], [-5.0, -5.0]])
    z = (centres.repeat(50, 1) + 0.1 * torch.randn(200, 2))[:, :, None]
    vq = VectorQuantizer(4, 2, ema_decay=0.9, init="kmeans")
    out = vq(z)
    assert codebook_perplexity(out.indices, 4).item() > 3.99  # every cluster has its own code at once
    dist = torch.cdist(vq.codebook, centres).min(1).values
    assert (dist < 0.1).all()
    uniform = VectorQuantizer(4, 2, ema_decay=0.9)
    assert codebook_perplexity(uniform(z).indices, 4).item() < 3.5  # the uniform start shares codes at first
    state = vq.state_dict()
    loaded = VectorQuantizer(4, 2, ema_decay=0.9, init="kmeans")
    loaded.load_state_dict(state)
    before = loaded.codebook.clone()
    loaded.eval()(z)
    assert torch.equal(loaded.codebook, before) and not loaded._needs_init  # not initialised again
    x = torch.randn(100, 2, dtype=torch.float64)
    fit = kmeans(x, 5, iterations=50, generator=torch.Generator().manual_seed(0))
    assign = nearest_code(x, fit)
    for k in range(5):
        assert torch.allclose(fit[k], x[assign == k].mean(0))  # a Lloyd fixed point
    with pytest.raises(ValueError, match="init"):
        VectorQuantizer(4, 2, init="random")


def test_fsq_follows_the_input_dtype():
    fsq = FiniteScalarQuantizer((5, 4))
    for dtype in (torch.float64, torch.bfloat16):
        out = fsq(torch.randn(3, 2, 2, 2).to(dtype))
        assert out.quantized.dtype == dtype
    assert fsq.lookup(torch.arange(20)[:, None], dtype=torch.float64).dtype == torch.float64
    assert fsq.lookup(torch.arange(20)[:, None]).dtype == torch.get_default_dtype()
    with pytest.raises(TypeError):
        fsq.lookup(torch.arange(3)[:, None], dtype=torch.long)


def test_code_counts_match_bincount():
    from kexue.torch.vq import _code_counts

    idx = torch.randint(0, 50, (7, 3, 4), generator=torch.Generator().manual_seed(0))
    assert torch.equal(_code_counts(idx, 64), torch.bincount(idx.flatten(), minlength=64))


def test_quantizer_loss_is_codebook_plus_beta_commitment():
    torch.manual_seed(0)
    z = torch.randn(4, 3, 2, 2)
    for beta in (0.25, 2.0):
        out = VectorQuantizer(8, 3, beta=beta)(z)
        assert out.loss.item() == pytest.approx(out.codebook_loss.item() + beta * out.commitment_loss.item(), rel=1e-6)
        assert out.commitment_loss.item() > 0


def test_usage_is_a_moving_average_of_shares_with_a_grace_period_after_a_restart():
    vq = VectorQuantizer(8, 2, dead_code_threshold=0.7, usage_decay=0.5)  # dead: usage below 0.7 / 8
    with torch.no_grad():
        vq.codebook.copy_(torch.tensor([[10.0 * k, 0.0] for k in range(8)]))
    z = torch.tensor([[0.0, 0.0]] * 30 + [[10.0, 0.0]] * 9 + [[20.0, 0.0]])[:, :, None]  # counts 30, 9, 1, 0...
    vq(z)
    expected = 0.5 / 8 + 0.5 * torch.tensor([30, 9, 1, 0, 0, 0, 0, 0]) / 40  # shares n_k / N, not counts
    dead = expected < 0.7 / 8
    assert dead.tolist() == [False, False] + [True] * 6  # code 2 is used, but rarely: it is restarted too
    assert torch.allclose(vq.usage[~dead], expected[~dead])
    assert torch.allclose(vq.usage[dead], torch.full((6,), 1 / 8))  # grace: a fresh code gets the average share
    assert vq.restarts == 6


def test_a_restarted_ema_code_keeps_its_statistics_consistent():
    """After a restart, m_k / N_k is the new code: its next EMA update averages from there, not from 0."""
    torch.manual_seed(0)
    vq = VectorQuantizer(16, 2, ema_decay=0.9, dead_code_threshold=0.5, usage_decay=0.5)
    z = torch.randn(64, 2, 1) + 100.0  # one code wins everything, the others die and restart
    for _ in range(3):
        vq(z)
    assert vq.restarts > 0
    assert (vq.cluster_size > 0).all()  # every code was used or restarted (a restart sets N_k = 1)
    assert torch.allclose(vq.code_sum / vq.cluster_size[:, None], vq.codebook, rtol=1e-5, atol=1e-4)
    # every code is within the data's spread of some vector (the data sit near (100, 100)): none was dragged
    # towards the origin by a stale sum, or thrown away by a stale count
    assert (torch.cdist(vq.codebook, z.squeeze(-1)).min(dim=1).values < 3).all()


def test_sampling_draws_every_position_from_its_own_uniform_at_the_given_temperature():
    """A prior whose logits ignore the grid: every position is an independent draw from softmax(b / T)."""
    torch.manual_seed(0)
    prior = PixelCNNPrior(num_codes=4, height=2, width=3, hidden=8, layers=2).eval()
    bias = torch.tensor([1.0, 0.0, -1.0, 0.5])
    with torch.no_grad():
        prior.head[-1].weight.zero_()
        prior.head[-1].bias.copy_(bias)
    n = 20_000
    for temperature in (1.0, 2.0, 0.5):
        p = torch.softmax(bias.double() / temperature, 0)
        grids = prior.sample(n, generator=torch.Generator().manual_seed(1), temperature=temperature).flatten(1)
        for i in range(6):  # chi-square, 3 degrees of freedom: 0.1% critical value 16.3
            counts = torch.bincount(grids[:, i], minlength=4).double()
            assert ((counts - n * p) ** 2 / (n * p)).sum().item() < 16.3, (temperature, i)
        # neighbours independent: equal with probability sum p_k^2 (4 standard errors)
        q = (p ** 2).sum().item()
        for i, j in ((0, 1), (1, 2), (2, 3)):
            same = (grids[:, i] == grids[:, j]).double().mean().item()
            assert abs(same - q) < 4 * math.sqrt(q * (1 - q) / n), (temperature, i, j)


def test_lookups_reject_indices_out_of_range_and_quantizer_rejects_integer_input():
    with pytest.raises(ValueError, match=r"\[0, 9\)"):
        FiniteScalarQuantizer((3, 3)).lookup(torch.tensor([[9]]))
    with pytest.raises(ValueError, match=r"\[0, 8\)"):
        VectorQuantizer(8, 2).lookup(torch.tensor([[8]]))
    with pytest.raises(ValueError, match=r"\[0, 8\)"):
        VectorQuantizer(8, 2).lookup(torch.tensor([[-1]]))
    with pytest.raises(TypeError, match="floating"):
        VectorQuantizer(8, 2)(torch.zeros(2, 2, 3, dtype=torch.long))
    for bad in (dict(beta=True), dict(dead_code_threshold=True)):
        with pytest.raises(ValueError):
            VectorQuantizer(8, 2, **bad)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="host synchronisation is a CUDA matter")
def test_a_training_step_of_the_quantizer_never_synchronises_with_the_host():
    vq = VectorQuantizer(64, 4, ema_decay=0.9, dead_code_threshold=0.5).cuda()
    z = torch.randn(8, 4, 5, 5, device="cuda", requires_grad=True)
    vq(z)  # warm-up
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = vq(z)
        (out.quantized.sum() + out.loss).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
