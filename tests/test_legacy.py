"""The legacy classes reproduce shared/spec/legacy-layouts.md exactly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from legacy import LEGACY_CLASS_PATHS, BimodalCNN, MultimodalCNN, TabAE, TabularEmbeddingModule, TextCNN
from legacy.text_cnn import legacy_pool_size

V, E = 30, 6
TAB = ["f_a", "f_b", "f_c"]


def cfg(**kw) -> dict:
    base = {
        "text_name": "dialogue",
        "label_name": "label",
        "kernel_size": [3, 5],
        "num_layers": 2,
        "num_channels": [4, 5],
        "hidden_common_dim": 7,
        "max_sen_len": 40,
        "dropout_keep": 0.5,
    }
    base.update(kw)
    return base


def emb(v: int = V, e: int = E) -> torch.Tensor:
    return torch.randn(v, e, generator=torch.Generator().manual_seed(0))


def spec_text_cnn_layout(c: dict, num_classes: int, v: int = V, e: int = E) -> list[tuple[str, tuple]]:
    """TextCNN keys and shapes in state_dict order, written from the spec table."""
    chans = c["num_channels"]
    ins = [e] + chans[:-1]
    out = [("class_weights_tensor", (num_classes,)), ("embeddings.weight", (v, e))]
    for j, k in enumerate(c["kernel_size"]):
        for i in range(c["num_layers"]):
            out.append((f"convs.{j}.{3 * i}.weight", (chans[i], ins[i], k)))
            out.append((f"convs.{j}.{3 * i}.bias", (chans[i],)))
    out.append(("network.1.weight", (c["hidden_common_dim"], chans[-1] * len(c["kernel_size"]))))
    out.append(("network.1.bias", (c["hidden_common_dim"],)))
    out.append(("loss_op.weight", (num_classes,)))
    return out


def spec_bimodal_layout(c: dict, num_classes: int) -> list[tuple[str, tuple]]:
    h = c["hidden_common_dim"]
    out = [("class_weights_tensor", (num_classes,))]
    out += [("text_subnetwork." + k, s) for k, s in spec_text_cnn_layout(c, num_classes)]
    h_tab = 0
    if c.get("tab_field_list"):
        d = len(c["tab_field_list"])
        h_tab = h
        out += [
            ("tab_subnetwork.embedding_layer.0.weight", (d,)),
            ("tab_subnetwork.embedding_layer.0.bias", (d,)),
            ("tab_subnetwork.embedding_layer.1.weight", (h, d)),
            ("tab_subnetwork.embedding_layer.1.bias", (h,)),
        ]
    out += [
        ("final_merge_network.1.weight", (num_classes, h + h_tab)),
        ("final_merge_network.1.bias", (num_classes,)),
        ("loss_op.weight", (num_classes,)),
    ]
    return out


def layout(module: torch.nn.Module) -> list[tuple[str, tuple]]:
    return [(k, tuple(v.shape)) for k, v in module.state_dict().items()]


def text_batch(c: dict, key: str, n: int = 3, length: int | None = None, tab: bool = True) -> dict:
    g = torch.Generator().manual_seed(1)
    batch = {key: torch.randint(0, V, (n, length or c["max_sen_len"]), generator=g)}
    if tab and c.get("tab_field_list"):
        for name in c["tab_field_list"]:
            batch[name] = torch.randn(n, generator=g)
    return batch


CONFIGS = [
    pytest.param(cfg(), 2, id="k35-L2-notab-binary"),
    pytest.param(cfg(tab_field_list=TAB), 2, id="k35-L2-tab-binary"),
    pytest.param(
        cfg(tab_field_list=TAB, kernel_size=[3, 5, 7], max_sen_len=60, is_binary=False, num_classes=4),
        4,
        id="k357-L2-tab-multiclass",
    ),
    pytest.param(cfg(num_layers=1, num_channels=[5]), 2, id="k35-L1-notab"),
    pytest.param(
        cfg(num_layers=3, num_channels=[4, 5, 6], kernel_size=[3], max_sen_len=100, tab_field_list=TAB[:2]),
        2,
        id="k3-L3-tab",
    ),
    pytest.param(
        cfg(kernel_size=[3, 5, 7], max_sen_len=55, is_binary=False, num_classes=3), 3, id="k357-min"
    ),
]


# --------------------------------------------------------------------------- layouts


@pytest.mark.parametrize("c,num_classes", CONFIGS)
def test_text_cnn_state_dict_layout(c, num_classes):
    model = TextCNN(c, V, emb())
    assert layout(model) == spec_text_cnn_layout(c, num_classes)


@pytest.mark.parametrize("c,num_classes", CONFIGS)
def test_bimodal_state_dict_layout_v0_and_v1(c, num_classes):
    v1 = BimodalCNN(dict(c), V, emb())
    v0 = MultimodalCNN(dict(c), V, emb())
    assert layout(v1) == spec_bimodal_layout(c, num_classes)
    assert layout(v0) == layout(v1)
    if not c.get("tab_field_list"):
        assert v1.tab_subnetwork is None


def test_tab_ae_state_dict_layout():
    model = TabAE({"tab_field_list": TAB, "hidden_common_dim": 9})
    assert layout(model) == [
        ("embedding_layer.0.weight", (3,)),
        ("embedding_layer.0.bias", (3,)),
        ("embedding_layer.1.weight", (9, 3)),
        ("embedding_layer.1.bias", (9,)),
    ]
    assert isinstance(model, TabularEmbeddingModule)
    assert [type(m).__name__ for m in model.embedding_layer] == ["LayerNorm", "Linear", "ReLU"]


@pytest.mark.parametrize("c,_n", CONFIGS)
def test_conv_branch_modules_and_last_pool(c, _n):
    model = TextCNN(c, V, emb())
    for j, k in enumerate(c["kernel_size"]):
        branch = model.convs[j]
        assert len(branch) == 3 * c["num_layers"]
        for i in range(c["num_layers"]):
            conv, relu, pool = branch[3 * i], branch[3 * i + 1], branch[3 * i + 2]
            assert isinstance(conv, torch.nn.Conv1d) and conv.kernel_size == (k,)
            assert isinstance(relu, torch.nn.ReLU)
            assert isinstance(pool, torch.nn.MaxPool1d)
            last = i == c["num_layers"] - 1
            assert pool.kernel_size == (legacy_pool_size(k, c["max_sen_len"], c["num_layers"]) if last else k)
    assert isinstance(model.network[0], torch.nn.Dropout) and model.network[0].p == c["dropout_keep"]


def test_pool_size_arithmetic():
    assert legacy_pool_size(3, 40, 2) == 10  # 40 -> 38 -> 12 -> 10
    assert legacy_pool_size(5, 40, 2) == 3  # 40 -> 36 -> 7 -> 3
    assert legacy_pool_size(7, 60, 2) == 1
    assert legacy_pool_size(7, 55, 2) == 1 and legacy_pool_size(7, 54, 2) == 0
    assert legacy_pool_size(5, 40, 1) == 36


# --------------------------------------------------------------------------- forward


def test_text_cnn_forward_band_and_tail_ignored():
    torch.manual_seed(0)
    model = TextCNN(cfg(), V, emb()).eval()
    ids = torch.randint(0, V, (2, 60))
    with torch.no_grad():
        ref = model(ids[:, :40])
        assert ref.shape == (2, 7)
        for length in range(39, 54):
            out = model(ids[:, :length])
            assert out.shape == (2, 7)
            if length >= 40:  # the tail past max_sen_len is silently ignored
                assert torch.equal(out, ref)
        for length in (38, 54):
            with pytest.raises(RuntimeError):
                model(ids[:, :length])


def test_kernel7_needs_max_sen_len_55():
    c = cfg(kernel_size=[3, 5, 7], max_sen_len=54)
    model = TextCNN(c, V, emb()).eval()
    with pytest.raises(RuntimeError):
        model(torch.zeros(1, 54, dtype=torch.long))
    ok = TextCNN(cfg(kernel_size=[3, 5, 7], max_sen_len=55), V, emb()).eval()
    assert ok(torch.zeros(1, 55, dtype=torch.long)).shape == (1, 7)


def test_text_cnn_forward_arithmetic():
    c = cfg()
    model = TextCNN(c, V, emb()).eval()
    ids = torch.randint(0, V, (2, 40), generator=torch.Generator().manual_seed(3))
    x = F.embedding(ids, model.embeddings.weight).permute(0, 2, 1)
    feats = []
    for branch in model.convs:
        h = x
        for i in range(c["num_layers"]):
            h = F.relu(branch[3 * i](h))
            h = F.max_pool1d(h, branch[3 * i + 2].kernel_size)
        feats.append(h.squeeze(2))
    expected = model.network[1](torch.cat(feats, dim=1))
    with torch.no_grad():
        assert torch.allclose(model(ids), expected, atol=1e-6)


def test_bimodal_forward_arithmetic_and_era_text_keys():
    c = cfg(tab_field_list=TAB)
    v1 = BimodalCNN(dict(c), V, emb()).eval()
    v0 = MultimodalCNN(dict(c), V, emb()).eval()
    v0.load_state_dict(v1.state_dict(), strict=True)
    assert v1.text_name == "dialogue_input_ids"
    assert v0.text_name == "dialogue_processed_input_ids"
    b1 = text_batch(c, "dialogue_input_ids")
    b0 = {("dialogue_processed_input_ids" if k == "dialogue_input_ids" else k): v for k, v in b1.items()}
    with torch.no_grad():
        out1 = v1(b1)
        out0 = v0(b0)
        tab = torch.stack([b1[n] for n in TAB], dim=1)
        expected = v1.final_merge_network(
            torch.cat([v1.text_subnetwork(b1["dialogue_input_ids"]), v1.tab_subnetwork(tab)], dim=1)
        )
    assert out1.shape == (3, 2)
    assert torch.equal(out1, out0)
    assert torch.allclose(out1, expected, atol=1e-6)
    with pytest.raises(KeyError):
        v1(b0)
    with pytest.raises(KeyError):
        v0(b1)


def test_bimodal_without_tab_fields_uses_text_only():
    c = cfg(tab_field_list=None)
    model = BimodalCNN(c, V, emb()).eval()
    batch = text_batch(c, "dialogue_input_ids")
    with torch.no_grad():
        out = model(batch)
        expected = model.final_merge_network(model.text_subnetwork(batch["dialogue_input_ids"]))
    assert model.final_merge_network[1].in_features == 7
    assert torch.equal(out, expected)


def test_custom_text_input_ids_key():
    c = cfg(text_input_ids_key="ids")
    assert BimodalCNN(dict(c), V, emb()).text_name == "dialogue_ids"
    assert MultimodalCNN(dict(c), V, emb()).text_name == "dialogue_processed_ids"


# --------------------------------------------------------------------------- tabular


def test_combine_tab_data_rules():
    model = TabAE({"tab_field_list": TAB, "hidden_common_dim": 4})
    batch = {
        "f_a": [1, 2],  # list -> float32
        "f_b": torch.tensor([3, 4], dtype=torch.int64),  # tensor -> float32, 1-D -> [B,1]
        "f_c": torch.tensor([[5.0], [6.0]], dtype=torch.float64),  # already [B,1]
        "other": torch.zeros(2),
    }
    out = model.combine_tab_data(batch)
    assert out.dtype == torch.float32
    assert torch.equal(out, torch.tensor([[1.0, 3.0, 5.0], [2.0, 4.0, 6.0]]))
    with torch.no_grad():
        assert torch.equal(model(batch), model(out))
    with pytest.raises(KeyError, match="f_c"):
        model.combine_tab_data({"f_a": [1.0], "f_b": [2.0]})
    with pytest.raises(TypeError):
        model.combine_tab_data({"f_a": 1.0, "f_b": [2.0], "f_c": [3.0]})


def test_tab_ae_validation_and_width():
    for bad in ([], None):
        with pytest.raises(ValueError):
            TabAE({"tab_field_list": bad, "hidden_common_dim": 4})
    with pytest.raises(ValueError):
        TabAE({"hidden_common_dim": 4})
    model = TabAE({"tab_field_list": TAB, "hidden_common_dim": 4})
    assert model.output_tab_dim == 4
    assert model(torch.randn(5, 3)).shape == (5, 4)
    with pytest.raises(ValueError):
        model(torch.randn(5, 4))


# --------------------------------------------------------------------------- config rules


def test_is_binary_forces_two_classes_and_weights_are_padded():
    model = BimodalCNN(cfg(is_binary=True, num_classes=5), V, emb())
    assert model.num_classes == 2 and model.final_merge_network[1].out_features == 2
    multi = BimodalCNN(cfg(is_binary=False, num_classes=4, class_weights=[1.0, 2.0]), V, emb())
    expected = torch.tensor([1.0, 2.0, 1.0, 1.0])
    sd = multi.state_dict()
    for key in (
        "class_weights_tensor",
        "loss_op.weight",
        "text_subnetwork.class_weights_tensor",
        "text_subnetwork.loss_op.weight",
    ):
        assert torch.equal(sd[key], expected), key
    default = TextCNN(cfg(is_binary=False, num_classes=3), V, emb())
    assert torch.equal(default.class_weights_tensor, torch.ones(3))


def test_vocab_mismatch_and_embedding_trainability():
    with pytest.raises(ValueError):
        TextCNN(cfg(), V + 1, emb())
    frozen = TextCNN(cfg(is_embeddings_trainable=False), V, emb())
    assert not frozen.embeddings.weight.requires_grad
    assert "embeddings.weight" in frozen.state_dict()
    assert TextCNN(cfg(), V, emb()).embeddings.weight.requires_grad


# --------------------------------------------------------------------------- hyper-parameters

V1_FORBIDDEN = {"tab_field_list", "label_name", "vocab_size", "optimizer_type", "momentum", "word_embeddings"}
V1_KEPT = [
    "lr",
    "weight_decay",
    "hidden_common_dim",
    "num_classes",
    "is_binary",
    "dropout_keep",
    "kernel_size",
    "num_layers",
    "num_channels",
    "max_sen_len",
    "is_embeddings_trainable",
    "text_name",
    "text_input_ids_key",
    "class_weights",
    "metric_choices",
    "model_class",
    "embed_size",
    "tokenizer",
]


def full_cfg() -> dict:
    c = cfg(
        tab_field_list=TAB,
        is_binary=True,
        num_classes=2,
        is_embeddings_trainable=True,
        class_weights=[1.0],
        optimizer_type="SGD",
        lr=0.02,
        momentum=0.9,
        weight_decay=0.0,
        adam_epsilon=1e-8,
        metric_choices=["accuracy"],
        model_class="bimodal_cnn",
        embed_size=E,
        tokenizer="tok",
        text_input_ids_key="input_ids",
        id_name="id",
        risk_tables={"x": 1},
        emb_tensor=torch.ones(2),
    )
    return c


def test_text_cnn_and_v0_save_config_vocab_and_embedding_copy():
    for cls in (TextCNN, MultimodalCNN):
        c = full_cfg()
        words = emb()
        model = cls(c, V, words)
        hp = model.hparams
        assert list(hp.keys()) == ["config", "vocab_size", "word_embeddings"], cls
        assert hp["config"] is c and hp["vocab_size"] == V
        weight = model.embeddings.weight if cls is TextCNN else model.text_subnetwork.embeddings.weight
        assert hp["word_embeddings"].untyped_storage().data_ptr() == weight.untyped_storage().data_ptr()
        assert hp["config"]["class_weights"] == [1.0, 1.0]  # padded in place, as the legacy code did


def test_v1_saves_whitelisted_flat_subset():
    c = full_cfg()
    hp = dict(BimodalCNN(c, V, emb()).hparams)
    assert not V1_FORBIDDEN & set(hp)
    assert not any(isinstance(v, torch.Tensor) for v in hp.values())
    assert {"risk_tables", "id_name", "emb_tensor"}.isdisjoint(hp)
    for key in V1_KEPT:
        assert hp[key] == c[key], key
    # flat, in config order
    assert list(hp) == [k for k in c if k in hp]


def test_v1_saves_only_keys_present_in_config():
    hp = dict(BimodalCNN(cfg(), V, emb()).hparams)
    assert set(hp) == {
        "text_name",
        "kernel_size",
        "num_layers",
        "num_channels",
        "hidden_common_dim",
        "max_sen_len",
        "dropout_keep",
    }


def test_tab_ae_saves_validated_flat_config():
    hp = dict(TabAE({"tab_field_list": TAB, "hidden_common_dim": 4, "label_name": "y", "lr": 0.1}).hparams)
    assert hp == {
        "tab_field_list": TAB,
        "hidden_common_dim": 4,
        "is_binary": True,
        "num_classes": 2,
        "input_tab_dim": 3,
    }
    assert list(hp) == ["tab_field_list", "hidden_common_dim", "is_binary", "num_classes", "input_tab_dim"]


# --------------------------------------------------------------------------- training hooks


@pytest.mark.filterwarnings("ignore:.*self.trainer.*reference is not registered")
def test_training_step_is_weighted_cross_entropy():
    c = cfg(
        tab_field_list=TAB, is_binary=False, num_classes=3, class_weights=[1.0, 3.0, 0.5], dropout_keep=0.0
    )
    model = BimodalCNN(c, V, emb())
    batch = text_batch(c, "dialogue_input_ids", n=4)
    batch["label"] = torch.tensor([0, 1, 2, 1])
    loss = model.training_step(batch, 0)["loss"]
    expected = F.cross_entropy(model(batch), batch["label"], weight=torch.tensor([1.0, 3.0, 0.5]))
    assert torch.allclose(loss, expected)

    text = TextCNN(cfg(hidden_common_dim=2, dropout_keep=0.0), V, emb())
    tb = {"dialogue_processed_input_ids": batch["dialogue_input_ids"], "label": torch.tensor([0, 1, 1, 0])}
    loss = text.training_step(tb, 0)["loss"]
    assert torch.allclose(loss, F.cross_entropy(text(tb["dialogue_processed_input_ids"]), tb["label"]))


def test_configure_optimizers():
    sgd = BimodalCNN(cfg(lr=0.1, momentum=0.8), V, emb()).configure_optimizers()
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.8 and sgd.defaults["lr"] == 0.1
    model = BimodalCNN(cfg(optimizer_type="Adam", weight_decay=0.01), V, emb())
    adamw = model.configure_optimizers()
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["weight_decay"] == 0.01
    assert [id(p) for p in adamw.param_groups[0]["params"]] == [id(p) for p in model.parameters()]
    text_adam = TextCNN(cfg(optimizer_type="Adam"), V, emb()).configure_optimizers()
    assert type(text_adam) is torch.optim.Adam
    assert isinstance(TextCNN(cfg(), V, emb()).configure_optimizers(), torch.optim.SGD)


# --------------------------------------------------------------------------- class paths


def test_legacy_class_paths():
    expected = {
        "athelas.models.lightning.pl_text_cnn.TextCNN": TextCNN,
        "athelas.models.lightning.text.pl_text_cnn.TextCNN": TextCNN,
        "athelas.models.lightning.pl_tab_ae.TabAE": TabAE,
        "athelas.models.lightning.tabular.pl_tab_ae.TabAE": TabAE,
        "athelas.models.lightning.pl_tab_ae.TabularEmbeddingModule": TabularEmbeddingModule,
        "athelas.models.lightning.tabular.pl_tab_ae.TabularEmbeddingModule": TabularEmbeddingModule,
        "athelas.models.lightning.pl_multimodal_cnn.MultimodalCNN": MultimodalCNN,
        "athelas.models.lightning.bimodal.pl_bimodal_cnn.BimodalCNN": BimodalCNN,
    }
    for path, cls in expected.items():
        assert LEGACY_CLASS_PATHS[path] is cls
        assert path.rsplit(".", 1)[1] == cls.__name__
