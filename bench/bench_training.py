"""Training-step throughput: legacy BimodalCNN (v1) vs the refactored v2 BimodalCNN.

Both models get the same config, the same weights (the legacy state dict mapped
onto the v2 keys with the v1 -> v2 key map of target-layout.md) and identical
batches. One "training step" is what a Lightning ``training_step`` does for
these models plus the optimizer: forward on the batch dict, cross-entropy with
the model's ``loss_op``, ``backward``, ``SGD(momentum=0.9).step()``,
``zero_grad``. Steps are timed outside Lightning so that only the model code
differs.

After ``--warmup`` steps each, every repetition runs the ``--steps`` batches
through both models, alternating model by model (legacy then v2, then v2 then
legacy, ...) so that load from other processes hits both alike; each step is
timed alone (samples/s = batch / seconds). Reported: the median samples/s of
each model over ``steps * reps`` steps, the ratio v2 / legacy of the medians,
and the median of the per-pair ratios (adjacent legacy and v2 steps on the same
batch). A sanity check first asserts that both models compute the same loss on
the first batch.

    .venv/bin/python bench/bench_training.py            # defaults below
    .venv/bin/python bench/bench_training.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from athelas_migrate.models import BimodalCNN  # noqa: E402
from legacy import BimodalCNN as LegacyBimodalCNN  # noqa: E402

FIELDS = ["f_a", "f_b", "f_c"]


def v1_to_v2(state: dict) -> dict:
    out = {}
    for key, value in state.items():
        if key.startswith("text_subnetwork.") and key.endswith(("class_weights_tensor", "loss_op.weight")):
            continue  # the nested module's own loss weights: dropped (v2 has no nested loss)
        new = key.replace("text_subnetwork.network.1.", "text_encoder.projection.1.")
        new = new.replace("text_subnetwork.", "text_encoder.")
        new = new.replace("tab_subnetwork.embedding_layer.", "tab_encoder.embedding.")
        new = new.replace("final_merge_network.1.", "fusion.fusion.1.")
        out[new] = value
    return out


def make_batches(n: int, batch: int, seq: int, vocab: int, seed: int) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n):
        b = {"doc_input_ids": torch.randint(0, vocab, (batch, seq), generator=gen),
             "label": torch.randint(0, 2, (batch,), generator=gen)}
        for f in FIELDS:
            b[f] = torch.randn(batch, generator=gen)
        batches.append(b)
    return batches


def step(model, opt, batch) -> float:
    logits = model(batch)
    loss = model.loss_op(logits, batch["label"])
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.detach())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128, help="max_sen_len and batch sequence length")
    ap.add_argument("--vocab", type=int, default=20000)
    ap.add_argument("--embed", type=int, default=100)
    ap.add_argument("--steps", type=int, default=10, help="batches per repetition")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--json", help="also write the results to this JSON file")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (timings synchronise the device)")
    args = ap.parse_args()

    config = {"text_name": "doc", "label_name": "label", "tab_field_list": FIELDS,
              "kernel_size": [3, 5, 7], "num_channels": [100, 100], "num_layers": 2,
              "hidden_common_dim": 100, "max_sen_len": args.seq, "dropout_keep": 0.0,
              "optimizer_type": "SGD", "lr": 0.02, "momentum": 0.9}
    torch.manual_seed(0)
    embeddings = torch.randn(args.vocab, args.embed) * 0.1
    legacy = LegacyBimodalCNN(dict(config), args.vocab, embeddings.clone())
    v2 = BimodalCNN(dict(config), vocab_size=args.vocab, embed_size=args.embed)
    v2.load_state_dict(v1_to_v2(legacy.state_dict()), strict=True)
    device = torch.device(args.device)
    legacy.to(device).train()
    v2.to(device).train()
    opts = {
        "legacy": torch.optim.SGD(legacy.parameters(), lr=0.02, momentum=0.9),
        "v2": torch.optim.SGD(v2.parameters(), lr=0.02, momentum=0.9),
    }
    models = {"legacy": legacy, "v2": v2}

    batches = [{k: v.to(device) for k, v in b.items()}
               for b in make_batches(args.steps, args.batch, args.seq, args.vocab, seed=1)]
    with torch.no_grad():  # same arithmetic on the same batch (dropout 0)
        a = legacy.loss_op(legacy(batches[0]), batches[0]["label"])
        b = v2.loss_op(v2(batches[0]), batches[0]["label"])
    assert torch.allclose(a, b, atol=1e-5), (float(a), float(b))

    for name in models:
        for b in batches[: args.warmup]:
            step(models[name], opts[name], b)
    # Steps of the two models alternate (legacy, v2, v2, legacy, ...), so a burst of load from
    # other processes hits both alike; each pair of adjacent steps also gives one ratio.
    rates: dict[str, list[float]] = {"legacy": [], "v2": []}
    pair_ratios: list[float] = []
    for rep in range(args.reps):
        for i, b in enumerate(batches):
            order = ["legacy", "v2"] if (rep + i) % 2 == 0 else ["v2", "legacy"]
            secs = {}
            for name in order:
                _sync(device)
                t0 = time.perf_counter()
                step(models[name], opts[name], b)
                _sync(device)
                secs[name] = time.perf_counter() - t0
                rates[name].append(args.batch / secs[name])
            pair_ratios.append(secs["legacy"] / secs["v2"])
    med = {k: statistics.median(v) for k, v in rates.items()}
    ratio = med["v2"] / med["legacy"]
    per_rep = statistics.median(pair_ratios)

    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, " \
              f"{torch.get_num_threads()} threads"
    if device.type == "cuda":
        machine += f", {torch.cuda.get_device_name(device)}"
    print(f"machine: {machine}")
    print(f"BimodalCNN training step: batch {args.batch}, seq {args.seq}, vocab {args.vocab}x{args.embed}, "
          f"kernels [3,5,7] x 100 channels x 2 layers, 3 tabular fields; {args.steps} steps x {args.reps} reps")
    print("| model | median samples/s | p10 | p90 |")
    print("|---|---:|---:|---:|")
    for name in ("legacy", "v2"):
        q = statistics.quantiles(rates[name], n=10)
        print(f"| {name} | {med[name]:.1f} | {q[0]:.1f} | {q[-1]:.1f} |")
    print(f"ratio v2/legacy: {ratio:.3f} (of the medians); {per_rep:.3f} (median of {len(pair_ratios)} "
          "adjacent-step ratios)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"machine": machine, "args": vars(args), "samples_per_s": rates, "median": med,
                       "ratio": ratio, "ratio_adjacent_pairs_median": per_rep}, fh, indent=2)


if __name__ == "__main__":
    main()
