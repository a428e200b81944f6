import pytest
import torch

from skuniad.nn.dropout import dropout_add, keep_mask, random_words


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_keep_mask_is_zero_one_in_the_input_dtype_at_the_keep_rate(dtype):
    torch.manual_seed(0)
    mask = keep_mask(torch.empty(3, 400, 500, dtype=dtype), 0.1)
    assert mask.dtype == dtype and mask.shape == (3, 400, 500)
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    assert abs(float(mask.float().mean()) - 0.9) < 0.003
    torch.manual_seed(0)
    assert torch.equal(keep_mask(torch.empty(3, 400, 500, dtype=dtype), 0.1), mask)


def test_dropout_add_is_residual_plus_rescaled_masked_branch():
    torch.manual_seed(0)
    residual = torch.randn(200_000, requires_grad=True)
    x = torch.randn(200_000, requires_grad=True)
    y = dropout_add(residual, x, 0.3, training=True)
    branch = (y - residual).detach()
    kept = branch != 0
    assert abs(float(kept.float().mean()) - 0.7) < 0.005
    torch.testing.assert_close(branch[kept], x.detach()[kept] / 0.7)
    y.sum().backward()
    assert torch.equal(residual.grad, torch.ones_like(residual))
    torch.testing.assert_close(x.grad, kept.float() / 0.7)
    assert torch.equal(dropout_add(residual, x, 0.3, training=False), residual + x)
    assert torch.equal(dropout_add(residual, x, 0.0, training=True), residual + x)


def test_dropout_add_broadcasts_the_residual():
    torch.manual_seed(1)
    residual = torch.randn(1, 5, 4, dtype=torch.bfloat16)  # shared learned queries
    x = torch.randn(3, 5, 4, dtype=torch.bfloat16)
    y = dropout_add(residual, x, 0.5, training=True)
    assert y.shape == (3, 5, 4) and y.dtype == torch.bfloat16
    dropped = y == residual.expand_as(y)
    assert 0.3 < float(dropped.float().mean()) < 0.7


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
    torch.manual_seed(5)
    assert torch.equal(random_words(3000)[:1000], words)  # the cached counters grew


def test_random_words_have_balanced_independent_looking_bits():
    torch.manual_seed(0)
    words = random_words(1 << 16)
    bits = torch.stack([(words >> k) & 1 for k in range(64)], dim=1).float()
    assert (bits.mean(0) - 0.5).abs().max() < 0.01  # every bit position is fair
    halves = words.view(torch.int16).view(-1, 4).float()
    corr = torch.corrcoef(halves.T)
    assert (corr - torch.eye(4)).abs().max() < 0.02  # the four 16-bit slices are uncorrelated
