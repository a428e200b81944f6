import torch

from skuniad.nn.dropout import FastDropout, fast_dropout, random_words


def test_fast_dropout_drops_at_rate_and_keeps_the_mean():
    torch.manual_seed(0)
    x = torch.ones(400_000)
    y = fast_dropout(x, 0.1)
    dropped = float((y == 0).float().mean())
    assert abs(dropped - 0.1) < 0.003
    assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 1 / 0.9))
    assert abs(float(y.mean()) - 1) < 0.01


def test_fast_dropout_is_identity_in_eval_and_reproducible_with_seed():
    x = torch.randn(3, 7, 5)
    module = FastDropout(0.5).eval()
    assert module(x) is x
    module.train()
    torch.manual_seed(3)
    a = module(x)
    torch.manual_seed(3)
    assert torch.equal(module(x), a)
    assert torch.equal(fast_dropout(x, 1.0), torch.zeros_like(x))


def test_fast_dropout_gradient_matches_the_mask():
    torch.manual_seed(0)
    x = torch.randn(1000, requires_grad=True)
    y = fast_dropout(x, 0.3)
    y.sum().backward()
    kept = y.detach() != 0
    assert torch.allclose(x.grad[kept], torch.full_like(x.grad[kept], 1 / 0.7))
    assert (x.grad[~kept] == 0).all()


def test_fast_dropout_keeps_bf16_in_bf16():
    torch.manual_seed(0)
    x = torch.ones(200_000, dtype=torch.bfloat16)
    y = fast_dropout(x, 0.1)
    assert y.dtype == torch.bfloat16
    assert abs(float((y == 0).float().mean()) - 0.1) < 0.004
    kept = y[y != 0].float()
    assert torch.allclose(kept, torch.full_like(kept, 1 / 0.9), rtol=1e-2)


def _splitmix64(state: int) -> int:
    mask = (1 << 64) - 1
    z = state & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return z ^ (z >> 31)


def test_random_words_are_splitmix64_of_a_seed_from_the_torch_generator():
    torch.manual_seed(5)
    words = random_words(1000)
    torch.manual_seed(5)
    seed = int(torch.empty(1, dtype=torch.int64).random_(-(2**63), None)) % (1 << 64)
    for i in (0, 1, 2, 517, 999):
        assert int(words[i]) % (1 << 64) == _splitmix64(seed + i * 0x9E3779B97F4A7C15)
    torch.manual_seed(5)
    assert torch.equal(random_words(1000), words)
    assert not torch.equal(random_words(1000), words)  # the generator moved on


def test_random_words_have_balanced_independent_looking_bits():
    torch.manual_seed(0)
    words = random_words(1 << 16)
    bits = torch.stack([(words >> k) & 1 for k in range(64)], dim=1).float()
    assert (bits.mean(0) - 0.5).abs().max() < 0.01  # every bit position is fair
    halves = words.view(torch.int16).view(-1, 4).float()
    corr = torch.corrcoef(halves.T)
    assert (corr - torch.eye(4)).abs().max() < 0.02  # the four 16-bit slices are uncorrelated
