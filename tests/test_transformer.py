import pytest
import torch
import torch.nn.functional as F

from skuniad.nn.transformer import UniADReconstruction, anomaly_map, image_score


def _small(**kwargs):
    params = dict(
        hidden_dim=16,
        num_heads=2,
        num_encoder_layers=2,
        num_decoder_layers=2,
        dim_feedforward=32,
        dropout=0.0,
        neighbor_size=3,
    )
    params.update(kwargs)
    return UniADReconstruction(8, (5, 5), **params)


def test_paper_configuration_has_reference_parameter_count():
    model = UniADReconstruction(272, (14, 14))
    assert sum(p.numel() for p in model.parameters()) == 7_717_392
    parts = {
        "input_proj": 69_888,
        "output_proj": 69_904,
        "pos_embed": 3_584,
        "encoder.0": 789_760,
        "decoder.0": 1_103_616,
        "decoder_norm": 512,
    }
    for prefix, count in parts.items():
        got = sum(p.numel() for n, p in model.named_parameters() if n.startswith(prefix + "."))
        assert got == count, prefix


def test_neighbor_mask_is_a_buffer_built_once():
    model = _small()
    mask = model.neighbor_mask
    assert "neighbor_mask" in dict(model.named_buffers())
    assert "neighbor_mask" not in model.state_dict()  # derived from the config, not stored
    model(torch.randn(2, 8, 5, 5))
    assert model.neighbor_mask is mask
    assert int((~mask[12]).sum()) == 9


def test_initialisation_follows_the_reference():
    torch.manual_seed(0)
    model = _small()
    for name, param in model.named_parameters():
        if name.endswith("bias") and "norm" not in name:
            assert torch.count_nonzero(param) == 0, name
    pos = model.pos_embed.row_embed.weight
    assert 0 <= pos.min() and pos.max() < 1
    queries = torch.cat([layer.layer_queries.detach().flatten() for layer in model.decoder])
    assert abs(float(queries.std()) - 1) < 0.1
    bound = (6 / (16 + 8)) ** 0.5  # xavier-uniform for a 8 -> 16 Linear
    assert model.input_proj.weight.abs().max() <= bound


def test_position_embedding_is_column_then_row_half():
    model = _small()
    table = model.pos_embed()
    row, col = 2, 3
    expected = torch.cat(
        [model.pos_embed.col_embed.weight[col], model.pos_embed.row_embed.weight[row]]
    )
    torch.testing.assert_close(table[row * 5 + col], expected)


def test_reconstruction_ignores_the_hidden_window_of_each_token():
    # With the neighbor mask, a token's own input never reaches its own output.
    torch.manual_seed(0)
    model = _small(num_encoder_layers=0, num_decoder_layers=1).eval()
    x = torch.randn(1, 8, 5, 5)
    y = x.clone()
    y[0, :, 2, 2] += 5.0
    out_x, out_y = model(x), model(y)
    # the changed token's own output and its window see no difference
    torch.testing.assert_close(out_x[0, :, 1:4, 1:4], out_y[0, :, 1:4, 1:4])
    assert not torch.allclose(out_x[0, :, 0, 0], out_y[0, :, 0, 0])


def test_every_decoder_layer_restarts_from_its_own_queries():
    torch.manual_seed(0)
    model = _small(num_decoder_layers=2).eval()
    x = torch.randn(2, 8, 5, 5)
    base = model(x)
    with torch.no_grad():
        model.decoder[1].layer_queries.add_(1.0)
    assert not torch.allclose(model(x), base)


@pytest.mark.parametrize(("layer_queries", "owners"), [("every", 3), ("first", 1), ("none", 0)])
def test_layer_queries_choose_which_decoder_layers_own_a_query_table(layer_queries, owners):
    model = _small(num_decoder_layers=3, layer_queries=layer_queries)
    tables = [layer.layer_queries for layer in model.decoder]
    assert [t is not None for t in tables] == [i < owners for i in range(3)]
    per_table = 25 * 16
    assert sum(p.numel() for p in model.parameters()) == (
        sum(p.numel() for p in _small(num_decoder_layers=3).parameters()) - (3 - owners) * per_table
    )


def test_decoder_layer_without_queries_starts_from_the_previous_output():
    torch.manual_seed(0)
    model = _small(num_decoder_layers=2, layer_queries="first").eval()
    reference = _small(num_decoder_layers=2).eval()
    reference.load_state_dict(model.state_dict(), strict=False)
    memory, previous = torch.randn(1, 25, 16), torch.randn(1, 25, 16)
    pos, mask = model.pos_embed().unsqueeze(0), model.attn_bias
    with torch.no_grad():
        reference.decoder[1].layer_queries.copy_(previous[0])
        torch.testing.assert_close(
            model.decoder[1](memory, previous, pos, mask),
            reference.decoder[1](memory, previous, pos, mask),
        )


def test_unknown_layer_queries_are_refused():
    with pytest.raises(ValueError, match="layer_queries"):
        _small(layer_queries="some")


def test_forward_rejects_wrong_grid():
    with pytest.raises(ValueError, match="grid 4x4"):
        _small()(torch.randn(1, 8, 4, 4))


def test_anomaly_map_is_channel_l2_upsampled_with_aligned_corners():
    features = torch.randn(2, 6, 4, 4)
    recon = torch.randn(2, 6, 4, 4)
    token = ((recon - features) ** 2).sum(1).sqrt()
    torch.testing.assert_close(anomaly_map(features, recon, None), token)
    up = anomaly_map(features, recon, 64)
    assert up.shape == (2, 64, 64)
    torch.testing.assert_close(up[:, 0, 0], token[:, 0, 0])
    torch.testing.assert_close(up[:, -1, -1], token[:, -1, -1])
    torch.testing.assert_close(up.amax((1, 2)), token.amax((1, 2)))


def test_image_score_is_max_of_16px_average_pool():
    maps = torch.rand(3, 40, 40)
    best = torch.stack(
        [
            torch.stack(
                [m[i : i + 16, j : j + 16].mean() for i in range(25) for j in range(25)]
            ).max()
            for m in maps
        ]
    )
    torch.testing.assert_close(image_score(maps), best)
    torch.testing.assert_close(F.avg_pool2d(maps[:1, None], 16, 1).amax(), image_score(maps[:1])[0])


def test_bf16_autocast_keeps_the_token_stream_in_bf16():
    model = UniADReconstruction(8, (4, 4), hidden_dim=16, num_heads=2, neighbor_size=3).eval()
    seen = []
    for module in model.modules():
        if isinstance(module, torch.nn.LayerNorm):
            module.register_forward_hook(lambda m, args, out: seen.append(out.dtype))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 8, 4, 4))
    assert out.shape == (2, 8, 4, 4)
    assert seen and set(seen) == {torch.bfloat16}


def _textbook_attention(module, query, key, value, bias, weight_mask, p):
    """softmax(QK^T / sqrt(d) + bias), dropout on the weights, times V, out projection."""
    w_q, w_k, w_v = module.in_proj_weight.chunk(3)
    b_q, b_k, b_v = module.in_proj_bias.chunk(3)
    heads, dim = module.num_heads, module.embed_dim

    def split(x, w, b):
        return F.linear(x, w, b).unflatten(-1, (heads, dim // heads)).transpose(1, 2)

    q, k, v = split(query, w_q, b_q), split(key, w_k, b_k), split(value, w_v, b_v)
    weights = (q @ k.transpose(-1, -2) / (dim // heads) ** 0.5 + bias).softmax(-1)
    out = (weights * weight_mask.view_as(weights) / (1 - p)) @ v
    return module.out_proj(out.transpose(1, 2).flatten(2))


@pytest.mark.parametrize("layer_kind", ["encoder", "decoder"])
def test_training_layers_are_textbook_post_norm_layers_with_the_drawn_masks(
    monkeypatch, layer_kind
):
    from skuniad.nn import attention, dropout, transformer

    masks, real_keep_mask = [], dropout.keep_mask

    def recording(x, p):
        masks.append(real_keep_mask(x, p))
        return masks[-1]

    for module in (attention, dropout, transformer):  # dropout's own is dropout_add's
        monkeypatch.setattr(module, "keep_mask", recording)
    torch.manual_seed(0)
    p = 0.3
    model = _small(dropout=p).train()
    layer = (model.encoder if layer_kind == "encoder" else model.decoder)[0]
    memory = torch.randn(3, 25, 16)
    previous = torch.randn(3, 25, 16)
    pos = torch.randn(1, 25, 16)
    bias = model.attn_bias
    if layer_kind == "encoder":
        got = layer(memory, pos, bias)
    else:
        got = layer(memory, previous, pos, bias)

    drawn = iter(masks)

    def add(residual, branch):
        return residual + branch * next(drawn) / (1 - p)

    def ffn(x):
        hidden = F.relu(layer.ffn.linear1(x)) * next(drawn) / (1 - p)
        return layer.ffn.linear2(hidden)

    if layer_kind == "encoder":
        q = memory + pos
        a = _textbook_attention(layer.self_attn, q, q, memory, bias, next(drawn), p)
        x = layer.norm1(add(memory, a))
        want = layer.norm2(add(x, ffn(x)))
    else:
        queries = layer.layer_queries.unsqueeze(0)
        a = _textbook_attention(
            layer.self_attn, queries + pos, memory + pos, memory, bias, next(drawn), p
        )
        x = layer.norm1(add(queries, a))
        a = _textbook_attention(
            layer.multihead_attn, x + pos, previous + pos, previous, bias, next(drawn), p
        )
        x = layer.norm2(add(x, a))
        want = layer.norm3(add(x, ffn(x)))
    assert next(drawn, None) is None  # every drawn mask was used, in order
    assert 0.2 < float(1 - torch.cat([m.flatten() for m in masks]).mean()) < 0.4
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    got.sum().backward()  # the in-place masking leaves autograd a consistent graph


def test_image_score_mean_and_std_are_the_references_over_the_whole_map():
    maps = torch.rand(3, 40, 40, dtype=torch.float64)
    flat = maps.numpy().reshape(3, -1)
    torch.testing.assert_close(image_score(maps, method="mean"), torch.from_numpy(flat.mean(1)))
    # numpy's population std, as the reference's EvalImageStd
    torch.testing.assert_close(image_score(maps, method="std"), torch.from_numpy(flat.std(1)))
    with pytest.raises(ValueError, match="method"):
        image_score(maps, method="median")


@pytest.mark.parametrize("training", [True, False])
def test_the_network_compiles_to_one_graph_for_any_batch_size(training):
    """Dropout, jitter and the attention trace without graph breaks (torch.compile)."""
    import torch._dynamo

    model = _small(dropout=0.1).train(training)
    for batch in (3, 4):  # the second size makes the batch dimension symbolic
        explained = torch._dynamo.explain(model)(torch.randn(batch, 8, 5, 5))
        assert (explained.graph_count, explained.graph_break_count) == (1, 0)


def test_dropout_in_a_compiled_graph_keeps_the_rate():
    from skuniad.nn.dropout import keep_mask

    draw = torch.compile(lambda x: keep_mask(x, 0.25), backend="eager", fullgraph=True)
    mask = draw(torch.empty(200, 500))
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    assert abs(float(mask.mean()) - 0.75) < 0.01
