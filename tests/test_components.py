"""Tests of the plain nn.Module components (v2 layout of target-layout.md)."""

import pytest
import torch
from torch import nn

from athelas_migrate.components import (
    CNNEncoder,
    ConcatenationFusion,
    TabularEmbedding,
    combine_tabular_fields,
)
from athelas_migrate.components.cnn_encoder import branch_output_length, min_input_length


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# --------------------------------------------------------------- CNNEncoder
def test_cnn_encoder_layout_keys_and_shapes():
    enc = CNNEncoder(vocab_size=30, embedding_dim=8, kernel_sizes=[3, 5], num_channels=[4, 6],
                     num_layers=2, output_dim=5, dropout=0.25, max_seq_len=40)
    shapes = {k: tuple(v.shape) for k, v in enc.state_dict().items()}
    assert list(shapes) == [
        "embeddings.weight",
        "convs.0.0.weight", "convs.0.0.bias", "convs.0.3.weight", "convs.0.3.bias",
        "convs.1.0.weight", "convs.1.0.bias", "convs.1.3.weight", "convs.1.3.bias",
        "projection.1.weight", "projection.1.bias",
    ]
    assert shapes["embeddings.weight"] == (30, 8)
    assert shapes["convs.0.0.weight"] == (4, 8, 3)
    assert shapes["convs.1.0.weight"] == (4, 8, 5)
    assert shapes["convs.0.3.weight"] == (6, 4, 3)
    assert shapes["convs.1.3.weight"] == (6, 4, 5)
    assert shapes["projection.1.weight"] == (5, 12)
    assert enc.features_dim == 12 and enc.output_dim == 5
    # module types, in order, of one branch
    branch = enc.convs[1]
    assert [type(m) for m in branch] == [nn.Conv1d, nn.ReLU, nn.MaxPool1d,
                                         nn.Conv1d, nn.ReLU, nn.AdaptiveMaxPool1d]
    assert branch[2].kernel_size == 5
    assert branch[5].output_size == 1
    assert isinstance(enc.projection[0], nn.Dropout) and enc.projection[0].p == 0.25


def test_cnn_encoder_three_layers_conv_indices():
    enc = CNNEncoder(vocab_size=10, embedding_dim=4, kernel_sizes=[2], num_channels=[3, 5, 7],
                     num_layers=3, output_dim=None)
    convs = [k for k in enc.state_dict() if k.startswith("convs.") and k.endswith(".weight")]
    assert convs == ["convs.0.0.weight", "convs.0.3.weight", "convs.0.6.weight"]
    assert tuple(enc.state_dict()["convs.0.6.weight"].shape) == (7, 5, 2)
    assert enc.projection is None
    assert enc.output_dim == enc.features_dim == 7
    x = torch.randint(0, 10, (2, 30))
    assert enc(x).shape == (2, 7)


def test_cnn_encoder_without_embeddings_takes_embedded_input():
    enc = CNNEncoder(input_dim=6, kernel_sizes=[3], num_channels=[4], num_layers=1, output_dim=2)
    assert enc.embeddings is None
    assert "embeddings.weight" not in enc.state_dict()
    out = enc(torch.randn(3, 9, 6))
    assert out.shape == (3, 2)
    with pytest.raises(ValueError, match=r"\[B, L, 6\]"):
        enc(torch.randn(3, 9, 5))


def test_cnn_encoder_batch_of_one():
    enc = CNNEncoder(vocab_size=10, embedding_dim=4, kernel_sizes=[3, 5], num_channels=[3, 3],
                     output_dim=2, max_seq_len=40)
    assert enc(torch.randint(0, 10, (1, 40))).shape == (1, 2)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"embedding_dim": 8}, "embedding_dim requires vocab_size"),
        ({}, "either vocab_size"),
        ({"vocab_size": 10}, "embedding_dim is required"),
        ({"vocab_size": 10, "embedding_dim": 8, "input_dim": 7}, "must equal embedding_dim"),
        ({"vocab_size": 0, "embedding_dim": 8}, "vocab_size must be a positive integer"),
        ({"input_dim": 4, "kernel_sizes": []}, "kernel_sizes must be a non-empty list"),
        ({"input_dim": 4, "kernel_sizes": [3, 0]}, r"kernel_sizes\[1\]"),
        ({"input_dim": 4, "kernel_sizes": 3}, "kernel_sizes must be a non-empty list"),
        ({"input_dim": 4, "num_channels": [4], "num_layers": 2}, "num_channels has 1 entries"),
        ({"input_dim": 4, "num_layers": 0}, "num_layers must be a positive integer"),
        ({"input_dim": 4, "output_dim": -1}, "output_dim must be a positive integer"),
        ({"input_dim": 4, "dropout": 1.5}, "dropout must be a probability"),
        ({"input_dim": 4, "max_seq_len": 0}, "max_seq_len must be a positive integer"),
        ({"input_dim": 4.5}, "input_dim must be a positive integer"),
    ],
)
def test_cnn_encoder_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CNNEncoder(**kwargs)


def test_cnn_encoder_input_errors():
    enc = CNNEncoder(vocab_size=10, embedding_dim=4, kernel_sizes=[3, 5], num_channels=[3, 3],
                     output_dim=2, max_seq_len=40)
    with pytest.raises(ValueError, match="integer tensor"):
        enc(torch.randn(2, 40))
    with pytest.raises(ValueError, match=r"\[B, L\]"):
        enc(torch.randint(0, 10, (2, 40, 1)))
    # kernel 5, 2 layers: need conv(5) -> pool(5) -> conv(5) >= 1  => L >= (5*5) + 4 = 29
    assert enc.min_seq_len == 29
    enc(torch.randint(0, 10, (2, 29)))
    with pytest.raises(ValueError, match="too short"):
        enc(torch.randint(0, 10, (2, 28)))


def test_min_input_length_matches_simulation():
    for kernels, layers in [([3], 1), ([3, 5], 2), ([2, 4, 7], 2), ([3], 3)]:
        m = min_input_length(kernels, layers)
        assert all(branch_output_length(m, k, layers) >= 1 for k in kernels)
        assert any(branch_output_length(m - 1, k, layers) < 1 for k in kernels)


def _legacy_pool_size(max_len, k, num_layers):
    """P_k of legacy-layouts.md."""
    length = max_len
    for i in range(num_layers):
        length = length - k + 1
        if i < num_layers - 1:
            length = (length - k) // k + 1
    return length


def _legacy_style_forward(enc, ids, max_len):
    """The legacy arithmetic (last pool MaxPool1d(P_k)) with the encoder's weights."""
    x = enc.embeddings(ids).permute(0, 2, 1)
    outs = []
    for k, branch in zip(enc.kernel_sizes, enc.convs):
        layers = list(branch)[:-1] + [nn.MaxPool1d(_legacy_pool_size(max_len, k, enc.num_layers))]
        outs.append(nn.Sequential(*layers)(x).squeeze(2))
    return enc.projection(torch.cat(outs, dim=1))


def test_adaptive_pool_equals_legacy_pool_at_max_len():
    max_len = 40
    enc = CNNEncoder(vocab_size=20, embedding_dim=6, kernel_sizes=[3, 5], num_channels=[4, 5],
                     output_dim=3, max_seq_len=max_len).eval()
    ids = torch.randint(0, 20, (4, max_len))
    with torch.no_grad():
        assert torch.allclose(enc(ids), _legacy_style_forward(enc, ids, max_len), atol=1e-6)


def test_adaptive_pool_pools_whole_sequence_at_other_lengths():
    enc = CNNEncoder(vocab_size=20, embedding_dim=6, kernel_sizes=[3, 5], num_channels=[4, 5],
                     output_dim=None, max_seq_len=40).eval()
    for length in (29, 33, 40, 57, 120):
        ids = torch.randint(0, 20, (2, length))
        with torch.no_grad():
            out = enc(ids)
            x = enc.embeddings(ids).permute(0, 2, 1)
            expected = torch.cat(
                [nn.Sequential(*list(b)[:-1])(x).amax(dim=2) for b in enc.convs], dim=1
            )
        assert out.shape == (2, 10)
        assert torch.equal(out, expected)


def test_long_input_is_not_truncated():
    # the legacy model silently ignored tokens past max_sen_len; v2 pools over all of them
    enc = CNNEncoder(input_dim=1, kernel_sizes=[1], num_channels=[1], num_layers=1)
    with torch.no_grad():
        enc.convs[0][0].weight.fill_(1.0)
        enc.convs[0][0].bias.zero_()
    x = torch.zeros(1, 10, 1)
    x[0, 9, 0] = 5.0  # the maximum sits in the tail
    assert enc(x).item() == 5.0
    assert enc(x[:, :5]).item() == 0.0


# --------------------------------------------------------- TabularEmbedding
def test_tabular_embedding_layout_and_forward():
    emb = TabularEmbedding(3, 7)
    shapes = {k: tuple(v.shape) for k, v in emb.state_dict().items()}
    assert shapes == {
        "embedding.0.weight": (3,), "embedding.0.bias": (3,),
        "embedding.1.weight": (7, 3), "embedding.1.bias": (7,),
    }
    assert list(shapes) == ["embedding.0.weight", "embedding.0.bias",
                            "embedding.1.weight", "embedding.1.bias"]
    assert [type(m) for m in emb.embedding] == [nn.LayerNorm, nn.Linear, nn.ReLU]
    assert (emb.input_dim, emb.hidden_dim, emb.output_dim) == (3, 7, 7)
    x = torch.randn(4, 3)
    out = emb(x)
    assert out.shape == (4, 7)
    assert (out >= 0).all()
    expected = torch.relu(emb.embedding[1](emb.embedding[0](x)))
    assert torch.equal(out, expected)
    # integer input is cast
    assert emb(torch.ones(2, 3, dtype=torch.long)).dtype == torch.float32


@pytest.mark.parametrize("shape", [(4, 2), (4, 4), (3,), (2, 3, 1)])
def test_tabular_embedding_wrong_width_raises(shape):
    with pytest.raises(ValueError, match=r"\[B, 3\]"):
        TabularEmbedding(3, 7)(torch.randn(*shape))


@pytest.mark.parametrize("args", [(0, 4), (3, 0), (None, 4), (3, "4")])
def test_tabular_embedding_argument_errors(args):
    with pytest.raises(ValueError):
        TabularEmbedding(*args)


# --------------------------------------------------- combine_tabular_fields
def test_combine_tabular_fields_rules():
    batch = {
        "a": [1, 2, 3],                                   # list -> float32 [B,1]
        "b": torch.tensor([4, 5, 6], dtype=torch.int64),  # int tensor -> float32
        "c": torch.tensor([[7.0], [8.0], [9.0]], dtype=torch.float64),  # already [B,1]
        "unused": "ignored",
    }
    out = combine_tabular_fields(batch, ["c", "a", "b"], torch.device("cpu"))
    assert out.dtype == torch.float32
    assert out.shape == (3, 3)
    assert torch.equal(out, torch.tensor([[7.0, 1.0, 4.0], [8.0, 2.0, 5.0], [9.0, 3.0, 6.0]]))
    # order follows field_list
    out2 = combine_tabular_fields(batch, ["a", "b"], None)
    assert torch.equal(out2, torch.tensor([[1.0, 4.0], [2.0, 5.0], [3.0, 6.0]]))
    # a 2-D multi-column field keeps its columns
    out3 = combine_tabular_fields({"m": torch.ones(2, 3), "s": [0.5, 0.5]}, ["m", "s"], "cpu")
    assert out3.shape == (2, 4)


def test_combine_tabular_fields_missing_field_names_it():
    with pytest.raises(KeyError, match="price"):
        combine_tabular_fields({"a": [1.0]}, ["a", "price"], None)


@pytest.mark.parametrize("value", [1.5, "text", (1.0, 2.0), {"x": 1}])
def test_combine_tabular_fields_unsupported_type(value):
    with pytest.raises(TypeError, match="weird"):
        combine_tabular_fields({"weird": value}, ["weird"], None)


def test_combine_tabular_fields_shape_errors():
    with pytest.raises(ValueError, match="batch size"):
        combine_tabular_fields({"a": [1.0, 2.0], "b": [1.0]}, ["a", "b"], None)
    with pytest.raises(ValueError, match="empty"):
        combine_tabular_fields({"a": [1.0]}, [], None)
    with pytest.raises(ValueError, match="1-D"):
        combine_tabular_fields({"a": torch.ones(2, 2, 2)}, ["a"], None)


# ------------------------------------------------------ ConcatenationFusion
def test_concatenation_fusion_layout_and_forward():
    fus = ConcatenationFusion([4, 3], 2)
    shapes = {k: tuple(v.shape) for k, v in fus.state_dict().items()}
    assert list(shapes) == ["fusion.1.weight", "fusion.1.bias"]
    assert shapes["fusion.1.weight"] == (2, 7)
    a, b = torch.randn(5, 4), torch.randn(5, 3)
    out = fus(a, b)
    expected = fus.fusion[1](torch.relu(torch.cat([a, b], dim=1)))
    assert torch.equal(out, expected)
    # order matters
    assert not torch.allclose(fus(a, b), ConcatenationFusion([4, 3], 2)(a, b))


def test_concatenation_fusion_without_activation():
    fus = ConcatenationFusion([4], 3, use_activation=False)
    assert isinstance(fus.fusion, nn.Linear)
    assert list(fus.state_dict()) == ["fusion.weight", "fusion.bias"]
    x = -torch.ones(2, 4)
    assert torch.equal(fus(x), fus.fusion(x))


def test_concatenation_fusion_checks():
    fus = ConcatenationFusion([4, 3], 2)
    with pytest.raises(ValueError, match="expects 2 feature tensors, got 1"):
        fus(torch.randn(5, 4))
    with pytest.raises(ValueError, match=r"feature 1 must have shape \[B, 3\]"):
        fus(torch.randn(5, 4), torch.randn(5, 2))
    with pytest.raises(ValueError, match="batch size"):
        fus(torch.randn(5, 4), torch.randn(4, 3))
    for bad in ([], [4, 0], 4):
        with pytest.raises(ValueError):
            ConcatenationFusion(bad, 2)
    with pytest.raises(ValueError):
        ConcatenationFusion([4], 0)
