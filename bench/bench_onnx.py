"""Inference latency on CPU: ONNX Runtime vs PyTorch eager, batch 1 and batch 64.

Builds a v2 BimodalCNN (legacy-default widths: kernels [3,5,7], 100 channels,
2 layers, hidden 100; vocabulary 20,000 x 100; 3 tabular fields; sequence length
128) and a v2 TextCNN of the same text branch, exports each with
:func:`athelas_migrate.export.export_onnx` (which also runs the parity check),
then times single calls:

* eager: ``model(batch)`` in eval mode under ``torch.inference_mode()``;
* ONNX Runtime: ``session.run`` (CPUExecutionProvider, default session options)
  on the same inputs as numpy arrays (conversion not timed).

Calls alternate between the two runtimes; after a warm-up, each latency is the
median of ``--reps`` timed calls (``--reps-64`` for batch 64). Reported in
milliseconds with the ratio eager / ONNX Runtime (> 1 means ONNX Runtime is faster).

    .venv/bin/python bench/bench_onnx.py
    .venv/bin/python bench/bench_onnx.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402

from athelas_migrate.export import export_onnx, input_spec_for  # noqa: E402
from athelas_migrate.models import BimodalCNN, TextCNN  # noqa: E402

FIELDS = ["f_a", "f_b", "f_c"]


def build(kind: str, seq: int, vocab: int, embed: int):
    config = {"text_name": "doc", "label_name": "label", "tab_field_list": FIELDS,
              "kernel_size": [3, 5, 7], "num_channels": [100, 100], "num_layers": 2,
              "hidden_common_dim": 100, "max_sen_len": seq}
    torch.manual_seed(0)
    if kind == "TextCNN":
        return TextCNN({**config, "tab_field_list": None, "hidden_common_dim": 2}, vocab_size=vocab,
                       embed_size=embed).eval()
    return BimodalCNN(config, vocab_size=vocab, embed_size=embed).eval()


def measure(model, path: str, batch: int, seq: int, reps: int, warmup: int) -> tuple[float, float, float]:
    spec = input_spec_for(model)
    tensors = spec.make_inputs(batch, seq, torch.Generator().manual_seed(batch))
    feeds = {n: t.numpy() for n, t in zip(spec.names, tensors)}
    reference = spec.reference or spec.wrapper
    reference.eval()
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    with torch.inference_mode():
        expected = reference(*tensors).numpy()
    diff = float(np.abs(sess.run(None, feeds)[0] - expected).max())
    eager, onnx_t = [], []
    with torch.inference_mode():
        for i in range(warmup + reps):
            t0 = time.perf_counter()
            reference(*tensors)
            t1 = time.perf_counter()
            sess.run(None, feeds)
            t2 = time.perf_counter()
            if i >= warmup:
                eager.append(t1 - t0)
                onnx_t.append(t2 - t1)
    return statistics.median(eager) * 1e3, statistics.median(onnx_t) * 1e3, diff


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=20000)
    ap.add_argument("--embed", type=int, default=100)
    ap.add_argument("--reps", type=int, default=200, help="timed calls at batch 1")
    ap.add_argument("--reps-64", type=int, default=40, help="timed calls at batch 64")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--json", help="also write the results to this JSON file")
    args = ap.parse_args()

    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
               f" ({torch.get_num_threads()} threads), onnxruntime {ort.__version__}")
    print(f"machine: {machine}")
    print(f"sequence length {args.seq}, vocabulary {args.vocab}x{args.embed}, kernels [3,5,7] x 100 channels x "
          f"2 layers; median of {args.reps} (batch 1) / {args.reps_64} (batch 64) calls")
    print("| model | batch | PyTorch eager ms | ONNX Runtime ms | eager / ORT | max abs diff |")
    print("|---|---:|---:|---:|---:|---:|")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("BimodalCNN", "TextCNN"):
            model = build(kind, args.seq, args.vocab, args.embed)
            path = os.path.join(tmp, f"{kind}.onnx")
            export_onnx(None, path, model=model)
            for batch, reps in ((1, args.reps), (64, args.reps_64)):
                eager_ms, ort_ms, diff = measure(model, path, batch, args.seq, reps, args.warmup)
                results.append({"model": kind, "batch": batch, "eager_ms": eager_ms, "ort_ms": ort_ms,
                                "ratio": eager_ms / ort_ms, "max_abs_diff": diff})
                print(f"| {kind} | {batch} | {eager_ms:.3f} | {ort_ms:.3f} | {eager_ms / ort_ms:.2f} | {diff:.2g} |",
                      flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"machine": machine, "args": vars(args), "results": results}, fh, indent=2)


if __name__ == "__main__":
    main()
