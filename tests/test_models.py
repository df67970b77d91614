"""Tests of the v2 Lightning models (layouts of target-layout.md, training, checkpoints)."""

import copy

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader

from athelas_migrate.models import AthelasModule, BimodalCNN, TabAE, TextCNN
from athelas_migrate.models.config import CONFIG_DEFAULTS, resolve_config, text_batch_key

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*does not have many workers.*"),
    pytest.mark.filterwarnings("ignore:.*smaller than the logging interval.*"),
    pytest.mark.filterwarnings("ignore:.*isinstance\\(treespec, LeafSpec\\).*"),
    pytest.mark.filterwarnings("ignore:.*but have no `val_dataloader`.*"),
]

V, E, L = 30, 8, 40


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def base_config(**over):
    cfg = {
        "text_name": "dlg",
        "label_name": "y",
        "tab_field_list": ["a", "b", "c"],
        "kernel_size": [3, 5],
        "num_channels": [4, 6],
        "num_layers": 2,
        "hidden_common_dim": 5,
        "max_sen_len": L,
    }
    cfg.update(over)
    return cfg


# ----------------------------------------------------- expected spec layouts
def conv_keys(prefix, n_kernels, num_layers):
    keys = []
    for j in range(n_kernels):
        for i in range(num_layers):
            keys += [f"{prefix}convs.{j}.{3 * i}.weight", f"{prefix}convs.{j}.{3 * i}.bias"]
    return keys


def conv_shapes(prefix, kernels, channels, num_layers, emb):
    shapes = {}
    in_dims = [emb] + channels[: num_layers - 1]
    for j, k in enumerate(kernels):
        for i in range(num_layers):
            shapes[f"{prefix}convs.{j}.{3 * i}.weight"] = (channels[i], in_dims[i], k)
            shapes[f"{prefix}convs.{j}.{3 * i}.bias"] = (channels[i],)
    return shapes


def expected_bimodal(cfg, n_classes):
    kernels, chans, nl, h = (cfg["kernel_size"], cfg["num_channels"], cfg["num_layers"],
                             cfg["hidden_common_dim"])
    tab = cfg.get("tab_field_list") or []
    shapes = {"class_weights_tensor": (n_classes,), "text_encoder.embeddings.weight": (V, E)}
    shapes.update(conv_shapes("text_encoder.", kernels, chans, nl, E))
    shapes["text_encoder.projection.1.weight"] = (h, chans[nl - 1] * len(kernels))
    shapes["text_encoder.projection.1.bias"] = (h,)
    if tab:
        d = len(tab)
        shapes.update({
            "tab_encoder.embedding.0.weight": (d,), "tab_encoder.embedding.0.bias": (d,),
            "tab_encoder.embedding.1.weight": (h, d), "tab_encoder.embedding.1.bias": (h,),
        })
    shapes["fusion.fusion.1.weight"] = (n_classes, h + (h if tab else 0))
    shapes["fusion.fusion.1.bias"] = (n_classes,)
    shapes["loss_op.weight"] = (n_classes,)
    keys = (["class_weights_tensor", "text_encoder.embeddings.weight"]
            + conv_keys("text_encoder.", len(kernels), nl)
            + ["text_encoder.projection.1.weight", "text_encoder.projection.1.bias"]
            + (["tab_encoder.embedding.0.weight", "tab_encoder.embedding.0.bias",
                "tab_encoder.embedding.1.weight", "tab_encoder.embedding.1.bias"] if tab else [])
            + ["fusion.fusion.1.weight", "fusion.fusion.1.bias", "loss_op.weight"])
    return keys, shapes


def layout(model):
    sd = model.state_dict()
    return list(sd), {k: tuple(v.shape) for k, v in sd.items()}


def test_bimodal_layout_literal():
    """The exact upstream key list for kernels [3,5], two layers, three tabular fields."""
    keys, shapes = layout(BimodalCNN(base_config(), word_embeddings=torch.randn(V, E)))
    assert keys == [
        "class_weights_tensor",
        "text_encoder.embeddings.weight",
        "text_encoder.convs.0.0.weight", "text_encoder.convs.0.0.bias",
        "text_encoder.convs.0.3.weight", "text_encoder.convs.0.3.bias",
        "text_encoder.convs.1.0.weight", "text_encoder.convs.1.0.bias",
        "text_encoder.convs.1.3.weight", "text_encoder.convs.1.3.bias",
        "text_encoder.projection.1.weight", "text_encoder.projection.1.bias",
        "tab_encoder.embedding.0.weight", "tab_encoder.embedding.0.bias",
        "tab_encoder.embedding.1.weight", "tab_encoder.embedding.1.bias",
        "fusion.fusion.1.weight", "fusion.fusion.1.bias",
        "loss_op.weight",
    ]
    assert shapes["text_encoder.convs.1.3.weight"] == (6, 4, 5)
    assert shapes["text_encoder.projection.1.weight"] == (5, 12)
    assert shapes["tab_encoder.embedding.1.weight"] == (5, 3)
    assert shapes["fusion.fusion.1.weight"] == (2, 10)


BIMODAL_CASES = [
    (base_config(), 2),
    (base_config(tab_field_list=None), 2),
    (base_config(tab_field_list=[]), 2),
    (base_config(is_binary=False, num_classes=4, tab_field_list=["a"]), 4),
    (base_config(is_binary=True, num_classes=7), 2),
    (base_config(kernel_size=[3, 5, 7], num_channels=[3, 5, 2], num_layers=3, max_sen_len=400), 2),
    (base_config(kernel_size=[2], num_channels=[9], num_layers=1), 2),
    (base_config(num_layers=1, num_channels=[6, 6]), 2),
]


@pytest.mark.parametrize("cfg, n_classes", BIMODAL_CASES)
def test_bimodal_layout_matches_spec(cfg, n_classes):
    model = BimodalCNN(cfg, vocab_size=V, embed_size=E)
    assert layout(model) == expected_bimodal(cfg, n_classes)
    assert model.num_classes == n_classes
    assert (model.tab_encoder is None) == (not cfg["tab_field_list"])


@pytest.mark.parametrize("cfg, _n", BIMODAL_CASES)
def test_text_cnn_layout_matches_spec(cfg, _n):
    model = TextCNN(cfg, vocab_size=V, embed_size=E)
    bkeys, bshapes = expected_bimodal(cfg, _n)
    keep = [k for k in bkeys if not k.startswith(("tab_encoder.", "fusion."))]
    assert layout(model) == (keep, {k: bshapes[k] for k in keep})
    assert model(torch.randint(0, V, (3, cfg["max_sen_len"]))).shape == (3, cfg["hidden_common_dim"])


@pytest.mark.parametrize("fields, hidden", [(["a"], 4), (["a", "b", "c"], 5), (list("abcdefg"), 2)])
def test_tab_ae_layout_matches_spec(fields, hidden):
    model = TabAE(base_config(tab_field_list=fields, hidden_common_dim=hidden))
    d = len(fields)
    assert layout(model) == (
        ["embedding.embedding.0.weight", "embedding.embedding.0.bias",
         "embedding.embedding.1.weight", "embedding.embedding.1.bias"],
        {"embedding.embedding.0.weight": (d,), "embedding.embedding.0.bias": (d,),
         "embedding.embedding.1.weight": (hidden, d), "embedding.embedding.1.bias": (hidden,)},
    )
    assert (model.input_tab_dim, model.output_tab_dim) == (d, hidden)


# ------------------------------------------------------------------ config
def test_resolve_config_defaults_and_rules():
    raw = {"text_name": "t", "label_name": "y", "extra": 1}
    cfg = resolve_config(raw)
    assert raw == {"text_name": "t", "label_name": "y", "extra": 1}  # not mutated
    for key, default in CONFIG_DEFAULTS.items():
        assert cfg[key] == default, key
    assert cfg["kernel_size"] == [3, 5, 7] and cfg["num_channels"] == [100, 100]
    assert cfg["lr"] == 0.02 and cfg["momentum"] == 0.9 and cfg["adam_epsilon"] == 1e-8
    assert cfg["class_weights"] == [1.0, 1.0]
    assert cfg["extra"] == 1
    cfg["kernel_size"].append(9)
    assert CONFIG_DEFAULTS["kernel_size"] == [3, 5, 7]  # defaults are copied
    assert resolve_config(cfg) == cfg  # idempotent

    assert resolve_config({"is_binary": True, "num_classes": 5})["num_classes"] == 2
    multi = resolve_config({"is_binary": False, "num_classes": 4, "class_weights": [2, 3]})
    assert multi["num_classes"] == 4
    assert multi["class_weights"] == [2.0, 3.0, 1.0, 1.0]
    assert resolve_config({"is_binary": True, "class_weights": [1, 5, 9]})["class_weights"] == [1.0, 5.0]
    assert resolve_config({"is_binary": False, "num_classes": 3})["class_weights"] == [1.0] * 3


def test_text_batch_key():
    assert text_batch_key({"text_name": "dlg"}) == "dlg_input_ids"
    assert text_batch_key({"text_name": "dlg", "text_input_ids_key": "ids"}) == "dlg_ids"
    assert text_batch_key({"text_name": "dlg", "text_batch_key": "dlg_processed_input_ids"}) == (
        "dlg_processed_input_ids")
    with pytest.raises(KeyError, match="text_name"):
        text_batch_key({"label_name": "y"})


def test_class_weights_buffers():
    model = BimodalCNN(base_config(is_binary=False, num_classes=3, class_weights=[0.5]),
                       vocab_size=V, embed_size=E)
    assert torch.equal(model.class_weights_tensor, torch.tensor([0.5, 1.0, 1.0]))
    assert model.loss_op.weight is model.class_weights_tensor
    assert model.hparams["config"]["class_weights"] == [0.5, 1.0, 1.0]


# -------------------------------------------------------------- embeddings
def test_word_embeddings_installed_and_sizes():
    we = torch.randn(V, E)
    model = BimodalCNN(base_config(is_embeddings_trainable=False), word_embeddings=we)
    w = model.text_encoder.embeddings.weight
    assert torch.equal(w, we) and w.requires_grad is False
    assert w.data_ptr() != we.data_ptr()  # a copy: training never writes into the caller's matrix
    assert (model.vocab_size, model.embed_size) == (V, E)
    assert model.hparams["vocab_size"] == V and model.hparams["embed_size"] == E
    assert "word_embeddings" not in model.hparams

    trainable = TextCNN(base_config(), word_embeddings=we.double())
    assert trainable.text_encoder.embeddings.weight.requires_grad is True
    assert trainable.text_encoder.embeddings.weight.dtype == torch.float32

    frozen = TextCNN(base_config(is_embeddings_trainable=False), vocab_size=V, embed_size=E)
    assert frozen.text_encoder.embeddings.weight.requires_grad is False


def test_embedding_size_errors():
    with pytest.raises(ValueError, match="vocab_size .* does not match"):
        BimodalCNN(base_config(), vocab_size=V + 1, word_embeddings=torch.randn(V, E))
    with pytest.raises(ValueError, match="embed_size .* does not match"):
        TextCNN(base_config(), embed_size=E + 1, word_embeddings=torch.randn(V, E))
    with pytest.raises(ValueError, match="required when word_embeddings is not given"):
        BimodalCNN(base_config(), vocab_size=V)
    with pytest.raises(ValueError, match=r"\[vocab_size, embed_size\]"):
        TextCNN(base_config(), word_embeddings=torch.randn(V))


# ----------------------------------------------------------------- forward
def make_batch(n=4, length=L, fields=("a", "b", "c"), key="dlg_input_ids", labels=None):
    batch = {key: torch.randint(0, V, (n, length))}
    for i, f in enumerate(fields):
        batch[f] = torch.randn(n) + i
    batch["y"] = torch.tensor(labels if labels is not None else [i % 2 for i in range(n)])
    return batch


def test_bimodal_forward_matches_components():
    model = BimodalCNN(base_config(), vocab_size=V, embed_size=E).eval()
    batch = make_batch()
    batch["a"] = batch["a"].tolist()  # lists are accepted
    with torch.no_grad():
        logits = model(batch)
        text = model.text_encoder(batch["dlg_input_ids"])
        tab = model.tab_encoder(torch.stack(
            [torch.tensor(batch["a"]), batch["b"], batch["c"]], dim=1))
        expected = model.fusion.fusion(torch.cat([text, tab], dim=1))
    assert logits.shape == (4, 2)
    assert torch.allclose(logits, expected)


def test_bimodal_forward_without_tab_and_custom_key():
    cfg = base_config(tab_field_list=None, text_batch_key="dlg_processed_input_ids")
    model = BimodalCNN(cfg, vocab_size=V, embed_size=E).eval()
    batch = make_batch(fields=(), key="dlg_processed_input_ids")
    with torch.no_grad():
        logits = model(batch)
        expected = model.fusion.fusion(model.text_encoder(batch["dlg_processed_input_ids"]))
    assert torch.allclose(logits, expected)
    with pytest.raises(KeyError, match="dlg_processed_input_ids"):
        model(make_batch(fields=()))


def test_bimodal_missing_tab_field():
    model = BimodalCNN(base_config(), vocab_size=V, embed_size=E)
    batch = make_batch(fields=("a", "b"))
    with pytest.raises(KeyError, match="'c'"):
        model(batch)


def test_tab_ae_forward_tensor_and_dict():
    model = TabAE(base_config(tab_field_list=["a", "b"], hidden_common_dim=3))
    batch = {"a": [1.0, 2.0], "b": torch.tensor([3, 4])}
    x = torch.tensor([[1.0, 3.0], [2.0, 4.0]])
    assert torch.equal(model(batch), model(x))
    assert model(x).shape == (2, 3)
    with pytest.raises(ValueError, match=r"\[B, 2\]"):
        model(torch.randn(2, 3))
    with pytest.raises(ValueError, match="tab_field_list"):
        TabAE(base_config(tab_field_list=None))
    with pytest.raises(ValueError, match="tab_field_list"):
        TabAE(base_config(tab_field_list=[]))


def test_predict_step_returns_probabilities():
    model = BimodalCNN(base_config(is_binary=False, num_classes=3), vocab_size=V, embed_size=E).eval()
    batch = make_batch()
    with torch.no_grad():
        probs = model.predict_step(batch, 0)
        expected = torch.softmax(model(batch), dim=1)
    assert probs.shape == (4, 3)
    assert torch.allclose(probs.sum(dim=1), torch.ones(4))
    assert torch.allclose(probs, expected)


# --------------------------------------------------------------- optimizer
def test_configure_optimizers():
    sgd = BimodalCNN(base_config(lr=0.1, momentum=0.5, weight_decay=0.01),
                     vocab_size=V, embed_size=E).configure_optimizers()
    assert type(sgd) is torch.optim.SGD
    assert sgd.defaults["lr"] == 0.1 and sgd.defaults["momentum"] == 0.5
    assert sgd.defaults["weight_decay"] == 0.01

    model = BimodalCNN(base_config(optimizer_type="Adam", adam_epsilon=1e-6,
                                   is_embeddings_trainable=False), vocab_size=V, embed_size=E)
    adamw = model.configure_optimizers()
    assert type(adamw) is torch.optim.AdamW and adamw.defaults["eps"] == 1e-6
    # all parameters, frozen embeddings included (legacy parameter indexing)
    assert len(adamw.param_groups[0]["params"]) == len(list(model.parameters()))

    adam = TextCNN(base_config(optimizer_type="Adam"), vocab_size=V, embed_size=E).configure_optimizers()
    assert type(adam) is torch.optim.Adam

    with pytest.raises(ValueError, match="RMSprop"):
        TextCNN(base_config(optimizer_type="RMSprop"), vocab_size=V, embed_size=E).configure_optimizers()


# -------------------------------------------------------------- checkpoint
def test_on_save_checkpoint_stamp_keeps_provenance():
    model = TabAE(base_config())
    ckpt = {}
    model.on_save_checkpoint(ckpt)
    assert ckpt["athelas_migrate"] == {"layout": "v2", "family": "TabAE"}
    ckpt = {"athelas_migrate": {"layout": "v1", "provenance": {"source": "x.ckpt"}}}
    model.on_save_checkpoint(ckpt)
    assert ckpt["athelas_migrate"] == {"layout": "v2", "family": "TabAE",
                                       "provenance": {"source": "x.ckpt"}}


def make_loader(n=16, fields=("a", "b", "c"), n_classes=2):
    g = torch.Generator().manual_seed(1)
    samples = []
    for i in range(n):
        s = {"dlg_input_ids": torch.randint(0, V, (L,), generator=g), "y": i % n_classes}
        for j, f in enumerate(fields):
            s[f] = float(torch.randn((), generator=g)) + j
        samples.append(s)
    return DataLoader(samples, batch_size=4, shuffle=False)


def make_trainer(tmp_path):
    return pl.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False,
                      default_root_dir=str(tmp_path))


def assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def fit_and_roundtrip(cls, model, loader, tmp_path, inputs):
    before = copy.deepcopy(model.state_dict())
    trainer = make_trainer(tmp_path)
    trainer.fit(model, loader)
    assert trainer.global_step == 3
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed, "training did not change any weight"

    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(str(path))
    ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    assert ckpt["athelas_migrate"] == {"layout": "v2", "family": cls.__name__}
    assert "word_embeddings" not in ckpt["hyper_parameters"]
    assert list(ckpt["state_dict"]) == list(model.state_dict())

    loaded = cls.load_from_checkpoint(str(path))
    assert type(loaded) is cls
    assert_same_state(model, loaded)
    model.eval()
    loaded.eval()
    with torch.no_grad():
        assert torch.equal(model(inputs), loaded(inputs))
    return trainer, loaded, path


def test_bimodal_trains_and_roundtrips(tmp_path):
    cfg = base_config(is_embeddings_trainable=False)
    model = BimodalCNN(cfg, word_embeddings=torch.randn(V, E))
    emb_before = model.text_encoder.embeddings.weight.detach().clone()
    loader = make_loader()
    trainer, loaded, _ = fit_and_roundtrip(BimodalCNN, model, loader, tmp_path, next(iter(loader)))
    # frozen embeddings stay frozen and untouched, also after loading
    assert torch.equal(model.text_encoder.embeddings.weight, emb_before)
    assert loaded.text_encoder.embeddings.weight.requires_grad is False
    assert loaded.hparams["config"] == resolve_config(cfg)
    # validation metrics are computed and logged
    metrics = trainer.validate(model, loader, verbose=False)[0]
    assert set(metrics) == {"val_loss", "val_accuracy", "val_f1", "val_auroc"}
    assert 0.0 <= metrics["val_accuracy"] <= 1.0


def test_bimodal_multiclass_adam_without_tab_trains_and_roundtrips(tmp_path):
    cfg = base_config(tab_field_list=None, is_binary=False, num_classes=3,
                      optimizer_type="Adam", class_weights=[1.0, 2.0])
    model = BimodalCNN(cfg, word_embeddings=torch.randn(V, E))
    loader = make_loader(fields=(), n_classes=3)
    trainer, loaded, _ = fit_and_roundtrip(BimodalCNN, model, loader, tmp_path, next(iter(loader)))
    assert type(trainer.optimizers[0]) is torch.optim.AdamW
    assert torch.equal(loaded.class_weights_tensor, torch.tensor([1.0, 2.0, 1.0]))
    metrics = trainer.test(model, loader, verbose=False)[0]
    assert {"test_loss", "test_accuracy", "test_f1", "test_auroc"} <= set(metrics)


def test_text_cnn_trains_and_roundtrips(tmp_path):
    # stand-alone TextCNN: its output is the logits, so hidden_common_dim == num_classes
    model = TextCNN(base_config(hidden_common_dim=2), word_embeddings=torch.randn(V, E))
    loader = make_loader()
    ids = next(iter(loader))["dlg_input_ids"]
    fit_and_roundtrip(TextCNN, model, loader, tmp_path, ids)


def test_text_cnn_alone_needs_num_classes_outputs():
    model = TextCNN(base_config(hidden_common_dim=5), vocab_size=V, embed_size=E)
    with pytest.raises(ValueError, match="num_classes"):
        model.training_step(make_batch(), 0)


def test_label_errors():
    model = BimodalCNN(base_config(label_name=None), vocab_size=V, embed_size=E)
    with pytest.raises(KeyError, match="label_name"):
        model.training_step(make_batch(), 0)
    model = BimodalCNN(base_config(label_name="target"), vocab_size=V, embed_size=E)
    with pytest.raises(KeyError, match="target"):
        model.training_step(make_batch(), 0)


def test_tab_ae_refuses_training_but_predicts_and_roundtrips(tmp_path):
    fields = ("a", "b", "c")
    model = TabAE(base_config(tab_field_list=list(fields)))
    loader = make_loader(fields=fields)
    with pytest.raises(RuntimeError, match="cannot be trained"):
        make_trainer(tmp_path).fit(model, loader)

    trainer = make_trainer(tmp_path)
    preds = trainer.predict(model, loader)
    assert len(preds) == 4 and preds[0].shape == (4, 5)
    path = tmp_path / "tab.ckpt"
    trainer.save_checkpoint(str(path))
    ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    assert ckpt["athelas_migrate"] == {"layout": "v2", "family": "TabAE"}
    loaded = TabAE.load_from_checkpoint(str(path))
    assert_same_state(model, loaded)
    batch = next(iter(loader))
    with torch.no_grad():
        assert torch.equal(model.eval()(batch), loaded.eval()(batch))


def test_provenance_survives_load_and_resave(tmp_path):
    model = TabAE(base_config())
    ckpt = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
            "pytorch-lightning_version": pl.__version__,
            "athelas_migrate": {"layout": "v2", "family": "TabAE", "provenance": {"from": "v1"}}}
    path = tmp_path / "migrated.ckpt"
    torch.save(ckpt, str(path))
    loaded = TabAE.load_from_checkpoint(str(path))
    out = {}
    loaded.on_save_checkpoint(out)
    assert out["athelas_migrate"]["provenance"] == {"from": "v1"}


def test_public_api():
    import athelas_migrate.models as models

    for name in ("TextCNN", "TabAE", "BimodalCNN", "AthelasModule"):
        assert name in models.__all__
    assert issubclass(BimodalCNN, AthelasModule) and issubclass(BimodalCNN, pl.LightningModule)
    assert issubclass(TextCNN, AthelasModule) and issubclass(TabAE, AthelasModule)
