"""Chapter 08: vector quantiser, FSQ, the VQ-VAE and the PixelCNN prior."""

import math

import pytest
import torch
import torch.nn.functional as F

from kexue.torch import (VQVAE, FiniteScalarQuantizer, MaskedConv2d, PixelCNNPrior, VectorQuantizer,
                         codebook_perplexity, nearest_code, train_prior, train_vqvae)


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


def test_masked_conv_prior_is_autoregressive_in_raster_order():
    torch.manual_seed(0)
    prior = PixelCNNPrior(num_codes=5, height=3, width=4, hidden=8, layers=3)
    grid = torch.randint(0, 5, (1, 3, 4))
    base = prior(grid)
    for j in range(12):
        changed = grid.clone()
        changed.view(-1)[j] = (changed.view(-1)[j] + 1) % 5
        diff = (prior(changed) - base).abs().sum(1).flatten()
        assert (diff[:j + 1] == 0).all(), j  # positions up to j do not see k_j
        if j < 11:
            assert diff[j + 1:].sum() > 0
    with pytest.raises(ValueError, match="odd"):
        MaskedConv2d("A", 2, 2, 4)
    with pytest.raises(ValueError, match="mask_type"):
        MaskedConv2d("C", 2, 2, 3)
    with pytest.raises(ValueError, match=r"\(batch, 3, 4\)"):
        prior(torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        prior(torch.full((1, 3, 4), 5))


def test_prior_learns_a_deterministic_pattern_and_samples_it():
    torch.manual_seed(0)
    pattern = torch.tensor([[0, 1, 2], [3, 0, 1]])
    codes = torch.stack([pattern, (pattern + 1) % 4] * 64)
    prior = PixelCNNPrior(num_codes=4, height=2, width=3, hidden=16, layers=2, first_kernel=5)
    curve = train_prior(prior, codes, codes[:8], epochs=60, lr=3e-3)
    assert curve[-1][1] < 0.2 * curve[0][1] and curve[-1][1] < 1.0  # near log 2 nats: which of the two grids
    assert prior.nll(codes[:8]).mean().item() == pytest.approx(min(val for _, val in curve), rel=1e-5)  # best kept
    samples = prior.sample(20, generator=torch.Generator().manual_seed(0))
    ok = [(torch.equal(s, pattern) or torch.equal(s, (pattern + 1) % 4)) for s in samples]
    assert sum(ok) >= 18


def test_prior_early_stopping_keeps_the_best_validation_epoch():
    torch.manual_seed(0)
    codes = torch.randint(0, 6, (40, 2, 2))  # noise: the prior can only overfit
    prior = PixelCNNPrior(num_codes=6, height=2, width=2, hidden=32, layers=2, first_kernel=3)
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
