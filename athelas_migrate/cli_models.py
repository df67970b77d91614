"""Click commands for using the refactored models: ``train``, ``predict``, ``export``, ``demo-data``.

The main ``athelas-migrate`` group registers ``train_cmd``, ``predict_cmd``,
``export_cmd`` and ``demo_data_cmd``. This module imports only click and the
standard library at import time; torch, Lightning, ONNX and rich are imported
inside the commands so that ``athelas-migrate --help`` stays fast. Errors that
are the user's fault are raised as ``athelas_migrate.errors`` exceptions
(``UsageError`` exit 2, ``InputError`` exit 3, ``ValidationError`` exit 1,
``OutputError`` exit 4); the main group turns them into one-line messages.

To add a command, write it here as a thin click layer over a function of its own module (as ``train``
over :mod:`athelas_migrate.train`) and list its name where ``cli.py`` registers this module.
"""

from __future__ import annotations

import click

__all__ = ["demo_data_cmd", "export_cmd", "predict_cmd", "train_cmd"]


def _console():
    from rich.console import Console

    return Console(highlight=False)


_SET_HELP = "VALUE is parsed as JSON when it is valid JSON; repeatable."


# ==================================================================== train
@click.command("train")
@click.argument("train_file", type=click.Path(dir_okay=False))
@click.option("--val", "val_file", type=click.Path(dir_okay=False),
              help="Validation file; without it a seeded --val-fraction of TRAIN_FILE is held out.")
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Directory for best.ckpt, last.ckpt, vocab.json, metrics.json and logs/.")
@click.option("-m", "--model", default="BimodalCNN", show_default=True,
              help="TextCNN, BimodalCNN, LSTM2Risk or Transformer2Risk (TabAE has no classification head: refused).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="JSON object: column roles (text_name, tab_field_list, label_name) and any "
                   "hyper-parameter or training setting.")
@click.option("--text-col", help="Column holding the text.")
@click.option("--num-cols", multiple=True, help="Numeric column(s), comma separated or repeated.")
@click.option("--label-col", help="Column holding the integer class label (0, 1, ...).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Model hyper-parameter or training setting (e.g. kernel_size=[3,5]). " + _SET_HELP)
@click.option("--max-epochs", type=int, help="Maximum epochs [10].")
@click.option("--batch-size", type=int, help="Training batch size [32].")
@click.option("--lr", type=float, help="Learning rate [config lr, legacy default 0.02].")
@click.option("--optimizer", type=click.Choice(["SGD", "Adam", "AdamW"], case_sensitive=False),
              help="Optimizer [config optimizer_type, legacy default SGD].")
@click.option("--max-len", type=int,
              help="Tokens per text (pad/truncate) [longest training text, at most 512, "
                   "at least what the kernels need].")
@click.option("--embed-size", type=int, help="Word embedding width [100, or the word vectors' width].")
@click.option("--min-freq", type=int, help="Minimum token count to enter the vocabulary [1].")
@click.option("--max-vocab", "max_vocab_size", type=int,
              help="Maximum vocabulary size, reserved ids included; 0 = no limit [50000].")
@click.option("--word-vectors", type=click.Path(dir_okay=False),
              help="GloVe-format text file of pretrained word vectors.")
@click.option("--patience", type=int, help="Early-stopping patience in epochs on val AUC; 0 = off [3].")
@click.option("--val-fraction", type=float, help="Held-out fraction when --val is not given [0.2].")
@click.option("--seed", type=int, help="Seed of splits, initialisation and shuffling [0].")
@click.option("--accelerator", default="auto", show_default=True, help="Lightning accelerator (cpu, gpu, ...).")
@click.option("--devices", default="auto", show_default=True, help="Lightning devices: auto, N, -1 or ids 0,1.")
@click.option("--strategy", default="auto", show_default=True, help="Lightning strategy (auto, ddp, ...).")
@click.option("--precision", default=None, help="Lightning precision (32-true, bf16-mixed, ...).")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show the progress bar.")
@click.option("--force", is_flag=True, help="Replace checkpoints, vocab and metrics already in --out.")
def train_cmd(train_file: str, val_file: str | None, out_dir: str, model: str, config_file: str | None,
              text_col: str | None, num_cols: tuple[str, ...], label_col: str | None, sets: tuple[str, ...],
              max_epochs: int | None, batch_size: int | None, lr: float | None, optimizer: str | None,
              max_len: int | None, embed_size: int | None, min_freq: int | None,
              max_vocab_size: int | None, word_vectors: str | None, patience: int | None,
              val_fraction: float | None, seed: int | None, accelerator: str, devices: str, strategy: str,
              precision: str | None, progress: bool, force: bool) -> None:
    """Train a TextCNN, BimodalCNN, LSTM2Risk or Transformer2Risk from CSV/TSV/Parquet files; writes v2 checkpoints.

    \b
    Example:
      athelas-migrate demo-data demo
      athelas-migrate train demo/train.csv --val demo/val.csv --config demo/config.json --out runs/demo
    """
    from .overrides import parse_overrides
    from .train import TrainOptions, parse_train_sets, render_result, resolve_model_name, split_names, train

    resolve_model_name(model)  # refuse TabAE / unknown names before any heavy import
    train_sets, model_sets = parse_train_sets(sets)
    opts = TrainOptions(
        train_path=train_file, val_path=val_file, out_dir=out_dir, model=model, config_file=config_file,
        text_col=text_col, num_cols=split_names(",".join(num_cols)) or None, label_col=label_col,
        overrides={**parse_overrides(model_sets), **train_sets}, max_epochs=max_epochs, batch_size=batch_size,
        lr=lr, optimizer=optimizer, max_len=max_len, embed_size=embed_size, min_freq=min_freq,
        max_vocab_size=max_vocab_size, word_vectors=word_vectors, patience=patience,
        val_fraction=val_fraction, seed=seed, accelerator=accelerator, devices=devices,
        strategy=strategy, precision=precision, progress=progress, force=force,
    )
    result = train(opts)
    if result.global_zero:  # one table, not one per process under DDP
        render_result(result, _console())


# ================================================================== predict
@click.command("predict")
@click.argument("ckpt", type=click.Path(dir_okay=False))
@click.argument("data", type=click.Path(dir_okay=False))
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False),
              help="Output file: .tsv (tab separated) or .csv.")
@click.option("--vocab", type=click.Path(dir_okay=False),
              help="Vocabulary JSON [the one recorded in the checkpoint, looked up beside it first].")
@click.option("--text-col", help="Text column of DATA [the checkpoint's text_name].")
@click.option("--label-col", help="Label column of DATA [the checkpoint's label_name]; optional.")
@click.option("--id-col", help="Column copied into the output as the row id [row number].")
@click.option("--batch-size", default=256, show_default=True, type=int)
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Hyper-parameter a legacy checkpoint lacks (e.g. tab_field_list=a,b,c). " + _SET_HELP)
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="JSON object of hyper-parameter overrides.")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
def predict_cmd(ckpt: str, data: str, out: str, vocab: str | None, text_col: str | None,
                label_col: str | None, id_col: str | None, batch_size: int, sets: tuple[str, ...],
                config_file: str | None, force: bool) -> None:
    """Write per-row class probabilities of DATA under the model in CKPT (v2 or legacy).

    Output columns: row (or --id-col), prob_0 .. prob_{C-1}, prediction, and label when DATA has it.
    """
    from .outputs import prepare_output, read_inputs_first
    from .overrides import parse_overrides

    overrides = parse_overrides(sets, config_file)  # usage errors first, before any heavy import
    prepare_output(out, force, inputs=(ckpt, data))
    read_inputs_first(ckpt)
    from .predict import predict

    result = predict(ckpt, data, out, vocab=vocab, overrides=overrides,
                     text_col=text_col, label_col=label_col, id_col=id_col, batch_size=batch_size,
                     force=force)
    console = _console()
    for note in result.notes:
        console.print(f"note: {note}")
    if result.metrics:
        parts = ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items())
        console.print(f"{result.model_class} on {data}: {parts}")
    console.print(f"wrote {result.n_rows} rows ({result.num_classes} class probabilities each) to "
                  f"{result.out_path}")


# =================================================================== export
@click.command("export")
@click.argument("ckpt", type=click.Path(dir_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--atol", default=1e-5, show_default=True, type=float,
              help="Largest allowed |ONNX Runtime - PyTorch| difference.")
@click.option("--opset", default=17, show_default=True, type=int, help="ONNX opset version.")
@click.option("--batch-sizes", default="1,4,16", show_default=True,
              help="Batch sizes of the parity check (comma separated).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the generated inputs.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Hyper-parameter a legacy checkpoint lacks (e.g. tab_field_list=a,b,c). " + _SET_HELP)
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="JSON object of hyper-parameter overrides.")
@click.option("--bert-config", "bert_config", type=click.Path(dir_okay=False), default=None,
              help="BERT families, legacy input: the transformers config.json of the text encoder(s).")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
def export_cmd(ckpt: str, out: str, atol: float, opset: int, batch_sizes: str, seed: int,
               sets: tuple[str, ...], config_file: str | None, bert_config: str | None, force: bool) -> None:
    """Export CKPT (v2 or legacy) to ONNX at OUT after checking ONNX Runtime against PyTorch.

    Dynamic batch axis (and sequence axis for token ids); inputs are named as the
    model's batch keys. On a parity mismatch nothing is written and the exit code is 1.
    """
    from .errors import UsageError
    from .outputs import prepare_output, read_inputs_first
    from .overrides import parse_overrides

    try:
        sizes = [int(b) for b in batch_sizes.split(",") if b.strip()]
    except ValueError:
        raise UsageError(f"--batch-sizes {batch_sizes!r}: expected integers such as 1,4,16") from None
    overrides = parse_overrides(sets, config_file, bert_config)  # usage errors first, before any heavy import
    prepare_output(out, force, inputs=(ckpt,))
    read_inputs_first(ckpt)
    from .cli import busy
    from .export import export_onnx, render_result

    with busy(f"exporting {ckpt} to ONNX and checking parity"):
        result = export_onnx(ckpt, out, overrides=overrides, atol=atol, opset=opset, batch_sizes=sizes, seed=seed,
                             force=force)
    render_result(result, _console())


# ================================================================ demo-data
@click.command("demo-data")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--rows", default=1000, show_default=True, type=int, help="Total rows (train + val + test).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--format", "fmt", default="csv", show_default=True,
              type=click.Choice(["csv", "parquet"], case_sensitive=False))
@click.option("--val-fraction", default=0.2, show_default=True, type=float)
@click.option("--test-fraction", default=0.1, show_default=True, type=float)
@click.option("--force", is_flag=True, help="Replace demo files already in OUT_DIR.")
def demo_data_cmd(out_dir: str, rows: int, seed: int, fmt: str, val_fraction: float, test_fraction: float,
                  force: bool) -> None:
    """Write a small deterministic demo dataset (text + 3 numeric fields + binary label) and config.json."""
    from .demo_data import write_demo_data

    paths = write_demo_data(out_dir, n_rows=rows, seed=seed, val_fraction=val_fraction,
                            test_fraction=test_fraction, fmt=fmt.lower(), force=force)
    counts = paths["rows"]
    for split in ("train", "val", "test"):
        click.echo(f"{split:5} {counts[split]:6} rows  {paths[split]}")
    click.echo(f"config           {paths['config']}")
    click.echo("next: athelas-migrate train "
               f"{paths['train']} --val {paths['val']} --config {paths['config']} --out runs/demo")
