import re

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from skuniad.nn.attention import MaskedMultiheadAttention, attention_bias, neighbor_mask

grids = st.tuples(st.integers(1, 12), st.integers(1, 12), st.sampled_from([1, 3, 5, 7, 9]))


def _window_count(i: int, j: int, height: int, width: int, k: int) -> int:
    half = k // 2
    rows = min(i + half, height - 1) - max(i - half, 0) + 1
    cols = min(j + half, width - 1) - max(j - half, 0) + 1
    return rows * cols


@settings(max_examples=60, deadline=None)
@given(grids)
def test_mask_hides_exactly_the_clipped_window(grid):
    height, width, k = grid
    n = height * width
    fits = any(
        _window_count(i, j, height, width, k) < n for i in range(height) for j in range(width)
    )
    all_hidden_somewhere = any(
        _window_count(i, j, height, width, k) == n for i in range(height) for j in range(width)
    )
    if all_hidden_somewhere:
        with pytest.raises(ValueError, match="hides every key"):
            neighbor_mask(height, width, k)
        return
    assert fits
    allowed = neighbor_mask(height, width, k)
    assert allowed.shape == (n, n) and allowed.dtype == torch.bool
    assert not allowed.diagonal().any(), "a query must never see its own position"
    assert torch.equal(allowed, allowed.T)
    for q in range(n):
        i, j = divmod(q, width)
        assert int((~allowed[q]).sum()) == _window_count(i, j, height, width, k)
        hidden = (~allowed[q]).view(height, width).nonzero()
        assert (hidden - torch.tensor([i, j])).abs().max() <= k // 2
    assert allowed.any(dim=1).all()


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 12), st.integers(1, 12))
def test_refused_window_names_the_largest_that_fits(height, width):
    with pytest.raises(ValueError, match="hides every key") as refused:
        neighbor_mask(height, width, 2 * max(height, width) + 1)  # larger than the grid
    named = re.search(r"at most (\d+)", str(refused.value))
    if named is None:  # a 1x1 grid: no window leaves a key
        assert max(height, width) == 1
        return
    largest = int(named.group(1))
    neighbor_mask(height, width, largest)
    with pytest.raises(ValueError, match="hides every key"):
        neighbor_mask(height, width, largest + 2)


def test_mask_on_paper_grid_leaves_147_keys_to_interior_queries():
    allowed = neighbor_mask(14, 14, 7)
    assert int(allowed[7 * 14 + 7].sum()) == 196 - 49
    assert int(allowed[0].sum()) == 196 - 16


@pytest.mark.parametrize("k", [0, 2, -1])
def test_mask_rejects_even_or_nonpositive_window(k):
    with pytest.raises(ValueError, match="odd"):
        neighbor_mask(5, 5, k)


def test_masked_attention_matches_torch_multihead_attention():
    torch.manual_seed(0)
    ours = MaskedMultiheadAttention(16, 4).eval()
    ref = torch.nn.MultiheadAttention(16, 4, batch_first=True).eval()
    with torch.no_grad():
        torch.nn.init.normal_(ours.in_proj_weight)
        torch.nn.init.normal_(ours.in_proj_bias)
    ref.load_state_dict(ours.state_dict())
    q, k, v = (torch.randn(2, 9, 16) for _ in range(3))
    allowed = neighbor_mask(3, 3, 1)
    float_mask = torch.zeros(9, 9).masked_fill(~allowed, float("-inf"))
    expected, _ = ref(q, k, v, attn_mask=float_mask)
    torch.testing.assert_close(ours(q, k, v, float_mask), expected, atol=1e-5, rtol=1e-5)
    ours.train()
    ours.dropout = 0.0  # same maths on the explicit (training) path
    ours_train = MaskedMultiheadAttention(16, 4, dropout=1e-9).train()
    ours_train.load_state_dict(ours.state_dict())
    torch.testing.assert_close(ours_train(q, k, v, float_mask), expected, atol=1e-5, rtol=1e-5)
    weights = ref(q, k, v, attn_mask=float_mask)[1]
    assert (weights[:, allowed.logical_not()] == 0).all(), "masked keys get zero weight"


def test_query_of_batch_one_is_shared_by_the_batch():
    torch.manual_seed(0)
    attention = MaskedMultiheadAttention(16, 4).eval()
    torch.nn.init.normal_(attention.in_proj_weight)
    torch.nn.init.normal_(attention.in_proj_bias)
    query = torch.randn(1, 9, 16)
    key, value = torch.randn(3, 9, 16), torch.randn(3, 9, 16)
    bias = torch.zeros(9, 9).masked_fill(~neighbor_mask(3, 3, 1), float("-inf"))
    shared = attention(query, key, value, bias)
    expanded = attention(query.expand(3, -1, -1), key, value, bias)
    assert shared.shape == (3, 9, 16)
    torch.testing.assert_close(shared, expanded)


def test_cpu_attention_matches_sdpa_and_keeps_the_dtype():
    from skuniad.nn.attention import _cpu_attention

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 16, 8) for _ in range(3))
    bias = torch.zeros(16, 16).masked_fill(~neighbor_mask(4, 4, 3), float("-inf"))
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    torch.testing.assert_close(_cpu_attention(q, k, v, bias, 0.0), expected)
    half = _cpu_attention(*(t.bfloat16() for t in (q, k, v)), bias, 0.0)
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), expected, atol=0.05, rtol=0.05)


def test_module_takes_the_cpu_path_in_bf16_and_with_dropout(monkeypatch):
    from skuniad.nn import attention as module

    calls = []
    original = module._cpu_attention
    monkeypatch.setattr(
        module, "_cpu_attention", lambda *args: calls.append(args[0].dtype) or original(*args)
    )
    attention = MaskedMultiheadAttention(16, 4, dropout=0.1)
    torch.nn.init.normal_(attention.in_proj_weight)
    torch.nn.init.zeros_(attention.in_proj_bias)
    x = torch.randn(2, 9, 16)
    with torch.no_grad():
        attention.eval()(x, x, x)  # fp32 inference: the fused kernel
        assert calls == []
        with torch.autocast("cpu", dtype=torch.bfloat16):
            attention(x, x, x)
        attention.train()(x, x, x)
    assert calls == [torch.bfloat16, torch.float32]


# ------------------------------------------------ off the CPU (the meta device)
def test_attention_bias_is_built_on_the_masks_device():
    mask = neighbor_mask(3, 3, 1).to("meta")
    assert attention_bias(mask).device.type == "meta"


def test_shared_queries_reach_fused_attention_contiguous_off_the_cpu(monkeypatch):
    seen = []
    sdpa = F.scaled_dot_product_attention

    def recording(q, k, v, **kwargs):
        seen.append((q.device.type, q.stride()))
        return sdpa(q, k, v, **kwargs) if q.device.type == "cpu" else torch.empty_like(q)

    monkeypatch.setattr(F, "scaled_dot_product_attention", recording)
    attention = MaskedMultiheadAttention(8, 2).eval()
    for device in ("cpu", "meta"):
        attention.to(device)
        query, memory = torch.randn(1, 9, 8, device=device), torch.randn(3, 9, 8, device=device)
        attention(query, memory, memory)
    (cpu, cpu_strides), (meta, meta_strides) = seen
    assert cpu_strides[0] == 0  # on the CPU the shared query is still not copied
    assert meta == "meta" and 0 not in meta_strides
