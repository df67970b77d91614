"""End to end: demo-data -> train (TextCNN, BimodalCNN) -> predict -> export, through the CLI.

Training runs once per module (300 demo rows, 2 epochs, a small model) and the
tests read what it wrote. Quality is checked independently of the metrics the
training code reports: AUCs are recomputed here from the prediction files.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from athelas_migrate.cli import main
from athelas_migrate.demo_data import DEMO_COLUMNS, NEGATIVE, POSITIVE, make_demo_rows, write_demo_data
from athelas_migrate.errors import InputError
from athelas_migrate.models import BimodalCNN, TextCNN
from athelas_migrate.text_vocab import Vocabulary, load_word_vectors, tokenize

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
TAB = ["spend_score", "complaint_rate", "tenure_years"]


def cli(*args: str):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result


def read_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    delimiter = "\t" if path.suffix == ".tsv" else ","
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh, delimiter=delimiter))
    return rows[0], rows[1:]


def auc(scores, labels) -> float:
    """Rank AUC (ties count half), written here so the tests do not trust the code under test."""
    scores, labels = np.asarray(scores, float), np.asarray(labels, int)
    pos, neg = scores[labels == 1], scores[labels == 0]
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Demo data, a GloVe-format file, and one short training run per model."""
    root = tmp_path_factory.mktemp("e2e")
    r = cli("demo-data", root / "demo", "--rows", 500, "--seed", 3)
    assert r.exit_code == 0, r.output
    demo = root / "demo"
    # "Pretrained" vectors: signal words point one way or the other on dimension 0.
    vectors = root / "glove.txt"
    with open(vectors, "w") as fh:
        fh.write("200 32\n")  # word2vec-style header, must be skipped
        gen = np.random.default_rng(0)
        for word in POSITIVE + NEGATIVE + ["the", "order"]:
            vec = gen.normal(0, 0.1, 32)
            vec[0] = 1.0 if word in POSITIVE else (-1.0 if word in NEGATIVE else 0.0)
            fh.write(word + " " + " ".join(f"{v:.6f}" for v in vec) + "\n")
    common = ["--val", demo / "val.csv", "--config", demo / "config.json", "--max-epochs", 2,
              "--no-progress", "--accelerator", "cpu", "--devices", 1, "--seed", 0]
    out = {"root": root, "demo": demo, "vectors": vectors}
    r = cli("train", demo / "train.csv", "--model", "BimodalCNN", "--out", root / "bimodal", *common)
    assert r.exit_code == 0, r.output
    out["bimodal_output"] = r.output
    r = cli("train", demo / "train.csv", "--model", "text_cnn", "--out", root / "textcnn", *common,
            "--word-vectors", vectors, "--set", "is_embeddings_trainable=false", "--set", "lr=0.01")
    assert r.exit_code == 0, r.output
    out["text_output"] = r.output
    out["bimodal"] = root / "bimodal"
    out["textcnn"] = root / "textcnn"
    return out


# ----------------------------------------------------------------- vocabulary
def test_tokenizer_lowercases_and_splits_on_non_word_characters():
    assert tokenize("Don't STOP, now!  ok_2") == ["don", "t", "stop", "now", "ok_2"]
    assert tokenize(None) == [] and tokenize(float("nan")) == []


def test_vocabulary_build_encode_save_load(tmp_path):
    vocab = Vocabulary.build(["b a a c", "a b d", "e"], min_freq=2)
    assert vocab.itos == ["<pad>", "<unk>", "a", "b"]  # frequency, then alphabetical; c, d, e dropped
    assert vocab.encode("A zzz b", 5) == [2, 1, 3, 0, 0]
    assert vocab.encode("a a a a a a", 3) == [2, 2, 2]
    capped = Vocabulary.build(["b a a c c c"], max_size=4)
    assert capped.itos == ["<pad>", "<unk>", "c", "a"]
    path = vocab.save(tmp_path / "v.json")
    data = json.loads(Path(path).read_text())
    assert data["tokens"] == vocab.itos and data["pad_id"] == 0 and data["unk_id"] == 1
    assert data["size"] == 4 and data["tokenizer"] == "athelas-regex-v1"
    assert Vocabulary.load(path).itos == vocab.itos
    (tmp_path / "bad.json").write_text('{"tokens": ["x"]}')
    with pytest.raises(InputError):
        Vocabulary.load(tmp_path / "bad.json")


def test_word_vectors_fill_known_rows(tmp_path):
    vocab = Vocabulary.build(["good bad ugly"])
    path = tmp_path / "g.txt"
    path.write_text("Good 1 2 3\nbad 4 5 6\nunused 7 8 9\n")
    matrix, found, dim = load_word_vectors(path, vocab, seed=0)
    assert (dim, found, tuple(matrix.shape)) == (3, 2, (5, 3))
    assert matrix[vocab.stoi["good"]].tolist() == [1, 2, 3]
    assert matrix[vocab.stoi["bad"]].tolist() == [4, 5, 6]
    assert matrix[0].abs().sum() == 0  # <pad>
    path.write_text("good 1 2 3\nbad 4 5\n")
    with pytest.raises(InputError, match="values"):
        load_word_vectors(path, vocab)


# ------------------------------------------------------------------ demo data
def test_demo_data_is_deterministic_and_complete(tmp_path):
    a = write_demo_data(tmp_path / "a", n_rows=120, seed=7)
    b = write_demo_data(tmp_path / "b", n_rows=120, seed=7)
    c = write_demo_data(tmp_path / "c", n_rows=120, seed=8)
    for split in ("train", "val", "test"):
        assert Path(a[split]).read_bytes() == Path(b[split]).read_bytes()
    assert Path(a["train"]).read_bytes() != Path(c["train"]).read_bytes()
    header, rows = read_rows(Path(a["train"]))
    assert header == DEMO_COLUMNS
    assert sum(a["rows"].values()) == 120 and len(rows) == a["rows"]["train"]
    config = json.loads(Path(a["config"]).read_text())
    assert config["text_name"] == "review" and config["tab_field_list"] == TAB
    r = cli("demo-data", tmp_path / "a", "--rows", 50)
    assert r.exit_code == 2  # existing files need --force
    labels = [row["label"] for row in make_demo_rows(2000, 0)]
    assert 0.45 < sum(labels) / len(labels) < 0.55


# ------------------------------------------------------------------- training
@pytest.mark.parametrize("name", ["bimodal", "textcnn"])
def test_training_improves_validation_auc(run, name):
    """The trained model beats the very model training started from, and is good in absolute terms."""
    from athelas_migrate.predict import predict

    metrics = json.loads((run[name] / "metrics.json").read_text())
    assert len(metrics["history"]) == 2
    reported_start, reported_best = metrics["untrained"]["val_auroc"], metrics["best"]["val_auroc"]
    # Recompute both AUCs here from prediction files.
    val = run["demo"] / "val.csv"
    r = cli("predict", run[name] / "best.ckpt", val, "-o", run["root"] / f"{name}_val.csv")
    assert r.exit_code == 0, r.output
    header, rows = read_rows(run["root"] / f"{name}_val.csv")
    labels = [int(x[header.index("label")]) for x in rows]
    trained_auc = auc([float(x[header.index("prob_1")]) for x in rows], labels)
    # The initial model: same config, same seed (train seeds torch with --seed 0 before building it).
    ckpt = torch.load(run[name] / "best.ckpt", map_location="cpu", weights_only=True)
    hp = ckpt["hyper_parameters"]
    cls = BimodalCNN if name == "bimodal" else TextCNN
    torch.manual_seed(0)
    if name == "textcnn":
        matrix, _, _ = load_word_vectors(run["vectors"], Vocabulary.load(run[name] / "vocab.json"), seed=0)
        start = cls(hp["config"], vocab_size=hp["vocab_size"], word_embeddings=matrix)
    else:
        start = cls(hp["config"], vocab_size=hp["vocab_size"], embed_size=hp["embed_size"])
    res = predict(str(run[name] / "best.ckpt"), str(val), str(run["root"] / f"{name}_start.csv"), model=start)
    _, rows0 = read_rows(Path(res.out_path))
    start_auc = auc([float(x[2]) for x in rows0], labels)
    assert abs(start_auc - reported_start) < 1e-3 and abs(trained_auc - reported_best) < 1e-3
    assert trained_auc >= 0.75, trained_auc
    assert trained_auc > start_auc + 0.1, (start_auc, trained_auc)


def test_training_shows_a_metrics_table_and_notes(run):
    out = run["bimodal_output"]
    for word in ("untrained", "auroc", "accuracy", "f1", "best val AUC", "best.ckpt", "vocab.json"):
        assert word in out


@pytest.mark.parametrize("name,cls", [("bimodal", BimodalCNN), ("textcnn", TextCNN)])
def test_checkpoints_are_v2_and_record_the_vocabulary(run, name, cls):
    for f in ("best.ckpt", "last.ckpt", "vocab.json", "metrics.json"):
        assert (run[name] / f).is_file()
    ckpt = torch.load(run[name] / "best.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["athelas_migrate"]["layout"] == "v2"
    assert ckpt["athelas_migrate"]["family"] == cls.__name__
    config = ckpt["hyper_parameters"]["config"]
    vocab = json.loads((run[name] / "vocab.json").read_text())
    assert config["vocab_file"] == "vocab.json"
    assert config["vocab_path"] == str(run[name] / "vocab.json")
    assert config["vocab_size"] == vocab["size"] == len(vocab["tokens"])
    assert config["tokenizer"] == "athelas-regex-v1"
    model = cls.load_from_checkpoint(run[name] / "best.ckpt", map_location="cpu")
    assert model.text_encoder.embeddings.num_embeddings == vocab["size"]
    if name == "bimodal":
        assert model.tab_field_list == TAB and model.text_batch_key == "review_input_ids"
    else:
        assert config["hidden_common_dim"] == config["num_classes"] == 2  # TextCNN head = logits


def test_word_vectors_are_installed_and_frozen(run):
    ckpt = torch.load(run["textcnn"] / "best.ckpt", map_location="cpu", weights_only=True)
    config = ckpt["hyper_parameters"]["config"]
    assert config["embed_size"] == 32 and config["is_embeddings_trainable"] is False
    vocab = Vocabulary.load(run["textcnn"] / "vocab.json")
    matrix, found, _ = load_word_vectors(run["vectors"], vocab, seed=0)
    weight = ckpt["state_dict"]["text_encoder.embeddings.weight"]
    assert found == len([w for w in POSITIVE + NEGATIVE + ["the", "order"] if w in vocab])
    torch.testing.assert_close(weight, matrix)  # frozen: exactly the file's vectors (and seeded rest)


# ------------------------------------------------------------------- predict
@pytest.mark.parametrize("suffix", [".tsv", ".csv"])
def test_predict_writes_one_row_per_input(run, suffix):
    test_csv = run["demo"] / "test.csv"
    out = run["root"] / f"pred{suffix}"
    r = cli("predict", run["bimodal"] / "best.ckpt", test_csv, "-o", out, "--id-col", "id", "--force")
    assert r.exit_code == 0, r.output
    header, rows = read_rows(out)
    data_header, data_rows = read_rows(test_csv)
    assert header == ["id", "prob_0", "prob_1", "prediction", "label"]
    assert len(rows) == len(data_rows)
    assert [x[0] for x in rows] == [d[0] for d in data_rows]
    assert [x[-1] for x in rows] == [d[data_header.index("label")] for d in data_rows]
    probs = np.array([[float(x[1]), float(x[2])] for x in rows])
    assert ((probs >= 0) & (probs <= 1)).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    assert [int(x[3]) for x in rows] == probs.argmax(axis=1).tolist()
    if suffix == ".tsv":
        assert "\t" in out.read_text().splitlines()[0]


def test_predict_without_labels_and_with_explicit_vocab(run, tmp_path):
    header, rows = read_rows(run["demo"] / "test.csv")
    keep = [i for i, h in enumerate(header) if h != "label"]
    nolabel = tmp_path / "nolabel.csv"
    with open(nolabel, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerows([[row[i] for i in keep] for row in [header, *rows]])
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    shutil.copy(run["textcnn"] / "best.ckpt", moved / "model.ckpt")
    shutil.copy(run["textcnn"] / "vocab.json", moved / "my_vocab.json")
    r = cli("predict", moved / "model.ckpt", nolabel, "-o", tmp_path / "p.tsv", "--vocab", moved / "my_vocab.json")
    assert r.exit_code == 0, r.output
    out_header, out_rows = read_rows(tmp_path / "p.tsv")
    assert out_header == ["row", "prob_0", "prob_1", "prediction"] and len(out_rows) == len(rows)
    # A vocabulary of the wrong size is refused (exit 3) and writes nothing.
    Vocabulary.build(["a b c"]).save(tmp_path / "small.json")
    r = cli("predict", moved / "model.ckpt", nolabel, "-o", tmp_path / "q.tsv", "--vocab", tmp_path / "small.json")
    assert r.exit_code == 3 and not (tmp_path / "q.tsv").exists()
    r = cli("predict", moved / "model.ckpt", nolabel, "-o", tmp_path / "p.json")
    assert r.exit_code == 2  # output must be .tsv or .csv
    r = cli("predict", moved / "model.ckpt", nolabel, "-o", tmp_path / "p.tsv")
    assert r.exit_code == 2  # exists, no --force


def test_predict_accepts_a_legacy_checkpoint(tmp_path):
    """A v1 BimodalCNN fixture (migrated in memory) gives the legacy model's own probabilities."""
    from legacy import BimodalCNN as LegacyBimodalCNN

    raw = torch.load(FIXTURES / "bimodal_cnn_v1.ckpt", map_location="cpu", weights_only=True)
    fields = ["ttm_conc_count", "net_conc_amt", "days_since_first_txn"]
    config = {**raw["hyper_parameters"], "tab_field_list": fields, "label_name": "label"}
    V, E = raw["state_dict"]["text_subnetwork.embeddings.weight"].shape
    legacy = LegacyBimodalCNN(config, V, torch.zeros(V, E))
    legacy.load_state_dict(raw["state_dict"])
    legacy.eval()
    vocab = Vocabulary(["<pad>", "<unk>", *[f"w{i}" for i in range(2, V)]])
    vocab_path = vocab.save(tmp_path / "vocab.json")
    gen = np.random.default_rng(0)
    n, L = 9, config["max_sen_len"]
    texts = [" ".join(f"w{t}" for t in gen.integers(2, V, size=int(gen.integers(L - 10, L + 10))))
             for _ in range(n)]
    texts[0] = "unknownword " + texts[0]
    tab = gen.normal(0, 2, size=(n, 3)).round(4)
    data = tmp_path / "data.csv"
    with open(data, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["dialogue", *fields])
        w.writerows([[t, *row] for t, row in zip(texts, tab.tolist())])
    out = tmp_path / "p.csv"
    r = cli("predict", FIXTURES / "bimodal_cnn_v1.ckpt", data, "-o", out, "--vocab", vocab_path,
            "--set", "tab_field_list=" + ",".join(fields))
    assert r.exit_code == 0, r.output
    header, rows = read_rows(out)
    got = torch.tensor([[float(x[1]), float(x[2])] for x in rows], dtype=torch.float64)
    batch = {"dialogue_input_ids": torch.tensor(vocab.encode_batch(texts, L)),
             **{f: torch.tensor(tab[:, i], dtype=torch.float32) for i, f in enumerate(fields)}}
    with torch.no_grad():
        expected = torch.softmax(legacy(batch), dim=1).double()
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    # Without --vocab a legacy checkpoint has no vocabulary to use: a usage error, not a crash.
    r = cli("predict", FIXTURES / "bimodal_cnn_v1.ckpt", data, "-o", tmp_path / "q.csv",
            "--set", "tab_field_list=" + ",".join(fields))
    assert r.exit_code == 2 and "--vocab" in r.output


# ------------------------------------------------------------ refusals (train)
def test_train_refuses_bad_requests(run, tmp_path):
    demo = run["demo"]
    r = cli("train", demo / "train.csv", "--model", "TabAE", "--out", tmp_path / "x")
    assert r.exit_code == 2 and "classification head" in r.output
    r = cli("predict", FIXTURES / "tab_ae_v1.ckpt", demo / "test.csv", "-o", tmp_path / "t.tsv",
            "--set", 'tab_field_list=["spend_score","complaint_rate","tenure_years"]')
    assert r.exit_code == 2 and "classification head" in r.output and not (tmp_path / "t.tsv").exists()
    r = cli("train", demo / "train.csv", "--config", demo / "config.json", "--label-col", "nope",
            "--out", tmp_path / "y", "--no-progress")
    assert r.exit_code == 3 and "nope" in r.output
    r = cli("train", demo / "train.csv", "--config", demo / "config.json", "--out", run["bimodal"])
    assert r.exit_code == 2 and "--force" in r.output  # never silently over earlier checkpoints
    r = cli("train", demo / "train.csv", "--config", demo / "config.json", "--max-len", 5, "--out", tmp_path / "z")
    assert r.exit_code == 2 and "kernel" in r.output
    bad = tmp_path / "bad.csv"
    bad.write_text("review,spend_score,complaint_rate,tenure_years,label\n" + "fine day,1,1,2,1\n" * 5
                   + "hello,abc,1,2,0\n")
    r = cli("train", bad, "--config", demo / "config.json", "--out", tmp_path / "w")
    assert r.exit_code == 3 and "spend_score" in r.output


# ---------------------------------------------------------- export of trained
@pytest.mark.parametrize("name", ["bimodal", "textcnn"])
def test_export_of_trained_models_matches_predict(run, name):
    """ONNX Runtime on the encoded test rows gives the probabilities `predict` wrote."""
    import onnxruntime as ort

    onnx_path = run["root"] / f"{name}.onnx"
    r = cli("export", run[name] / "best.ckpt", onnx_path)
    assert r.exit_code == 0, r.output
    assert "parity OK" in r.output
    pred = run["root"] / f"{name}_test.tsv"
    r = cli("predict", run[name] / "best.ckpt", run["demo"] / "test.csv", "-o", pred)
    assert r.exit_code == 0, r.output
    _, rows = read_rows(pred)
    expected = np.array([[float(x[1]), float(x[2])] for x in rows])
    config = torch.load(run[name] / "best.ckpt", map_location="cpu", weights_only=True)["hyper_parameters"]["config"]
    vocab = Vocabulary.load(run[name] / "vocab.json")
    header, data = read_rows(run["demo"] / "test.csv")
    ids = np.array(vocab.encode_batch([d[header.index("review")] for d in data], config["max_sen_len"]))
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    if name == "bimodal":
        assert names == ["review_input_ids", *TAB]
        feeds = {"review_input_ids": ids,
                 **{f: np.array([float(d[header.index(f)]) for d in data], np.float32) for f in TAB}}
    else:
        assert names == ["review_input_ids"]  # the batch key, as for every family
        feeds = {"review_input_ids": ids}
    logits = sess.run(None, feeds)[0]
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    np.testing.assert_allclose(probs, expected, atol=1e-5)


def test_parquet_files(tmp_path):
    """Parquet goes through pyarrow when it is installed, and is refused clearly when it is not."""
    from athelas_migrate.train import read_table

    try:
        import pyarrow  # noqa: F401
    except ImportError:
        (tmp_path / "d.parquet").write_bytes(b"PAR1")
        r = cli("train", tmp_path / "d.parquet", "--text-col", "t", "--label-col", "y", "--out", tmp_path / "o")
        assert r.exit_code == 2 and "pyarrow" in r.output
        r = cli("demo-data", tmp_path / "pq", "--format", "parquet")
        assert r.exit_code == 2 and "pyarrow" in r.output and not (tmp_path / "pq").exists()
        return
    paths = write_demo_data(tmp_path / "pq", n_rows=60, seed=1, fmt="parquet")
    csv_paths = write_demo_data(tmp_path / "csv", n_rows=60, seed=1)
    pq_table, csv_table = read_table(paths["train"]), read_table(csv_paths["train"])
    assert pq_table.columns["review"] == csv_table.columns["review"]
    assert [float(v) for v in pq_table.columns["spend_score"]] == [float(v) for v in csv_table.columns["spend_score"]]
