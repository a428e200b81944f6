import torch

from skuniad.nn.dropout import FastDropout, fast_dropout


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
