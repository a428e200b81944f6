import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from skuniad.nn.jitter import feature_jitter
from skuniad.nn.transformer import UniADReconstruction

shapes = st.tuples(st.integers(1, 3), st.integers(1, 10), st.integers(1, 16))


def _tokens(shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 3


@settings(max_examples=30, deadline=None)
@given(shapes, st.floats(0.1, 50))
def test_jitter_is_identity_without_scale_or_probability(shape, scale):
    x = _tokens(shape)
    assert torch.equal(feature_jitter(x, 0.0, 1.0), x)
    assert torch.equal(feature_jitter(x, scale, 0.0), x)


@settings(max_examples=30, deadline=None)
@given(shapes, st.floats(0.1, 50), st.integers(0, 2**16))
def test_jitter_noise_follows_token_norm_and_scale(shape, scale, seed):
    x = _tokens(shape, seed)
    x[..., 0, :] = 0  # zero tokens must stay zero
    gen = lambda: torch.Generator().manual_seed(seed)  # noqa: E731
    noisy = feature_jitter(x, scale, 1.0, generator=gen())
    assert noisy.shape == x.shape
    assert torch.equal(noisy[..., 0, :], x[..., 0, :])
    eps = torch.randn(x.shape, generator=gen())
    expected = x + eps * x.norm(dim=-1, keepdim=True) / x.shape[-1] * scale
    torch.testing.assert_close(noisy, expected)
    # linear in the scale, reproducible with the same seed
    doubled = feature_jitter(x, 2 * scale, 1.0, generator=gen())
    torch.testing.assert_close(doubled - x, 2 * (noisy - x))
    assert torch.equal(feature_jitter(x, scale, 1.0, generator=gen()), noisy)


def test_jitter_probability_is_one_draw_per_batch():
    x = _tokens((2, 5, 4))
    gen = torch.Generator().manual_seed(0)
    outcomes = [not torch.equal(feature_jitter(x, 5.0, 0.5, generator=gen), x) for _ in range(400)]
    assert 0.4 < sum(outcomes) / len(outcomes) < 0.6


def test_model_jitters_in_training_only():
    torch.manual_seed(0)
    model = UniADReconstruction(
        8,
        (3, 3),
        hidden_dim=16,
        num_heads=2,
        num_encoder_layers=1,
        num_decoder_layers=1,
        dim_feedforward=16,
        dropout=0.0,
        neighbor_size=1,
    )
    x = torch.randn(2, 8, 3, 3)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))
    model.jitter_scale = 0.0
    assert torch.equal(model(x), model(x))


# ------------------------------------------------ off the CPU (the meta device)
def test_jitter_never_reads_back_from_the_device():
    tokens = torch.randn(2, 9, 8, device="meta")  # .item() on meta raises
    torch.manual_seed(0)
    results = [feature_jitter(tokens, 20.0, 0.5) for _ in range(8)]
    assert all(r.device.type == "meta" for r in results)
    assert any(r is tokens for r in results) and any(r is not tokens for r in results)


def test_jitter_accepts_a_cpu_generator_for_device_tokens():
    tokens = torch.randn(2, 9, 8, device="meta")
    generator = torch.Generator().manual_seed(0)
    assert feature_jitter(tokens, 20.0, 1.0, generator).device.type == "meta"
    cpu = torch.randn(2, 9, 8)
    first = feature_jitter(cpu, 20.0, 0.5, torch.Generator().manual_seed(3))
    again = feature_jitter(cpu, 20.0, 0.5, torch.Generator().manual_seed(3))
    assert torch.equal(first, again)
