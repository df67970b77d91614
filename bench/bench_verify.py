"""Cost of `athelas-migrate verify` on a ~1 GB checkpoint pair against a durable copy of the file (`make bench`).

Builds (once, in bench/work/, gitignored) a v1 BimodalCNN Trainer checkpoint like bench_migrate.py's but with a
trainable 800,000 x 300 embedding (so verify computes its gradient, optimizer state and step), a tiny one
(vocabulary 1,000) built by the same code for the fixed cost, and their migrations. Then, interleaved in every
repetition, with the files warm in the page cache:

- baseline: `cp` + `sync` of the 1 GB file (a durable copy);
- `athelas-migrate verify` of the tiny pair and of the 1 GB pair, each a subprocess whose peak RssAnon is
  sampled from /proc (bench_migrate.measure).

Reported: the marginal time (t(verify 1 GB) - t(verify tiny)) / t(cp + sync) per repetition and its median
(goal <= 3x), and the peak RssAnon of the 1 GB verify over the checkpoint's tensor bytes (goal <= 1.5x, torch and
Lightning included). Results go to stdout (markdown) and bench/work/verify_results.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_migrate as bm  # noqa: E402  (the shared builders and the /proc sampler)

TIME_GOAL, MEMORY_GOAL = 3.0, 1.5


def ensure_pair(vocab: int, embed: int) -> tuple[Path, Path]:
    """(v1, its migration) for a trainable `vocab x embed` embedding, built once."""
    bm.WORK.mkdir(parents=True, exist_ok=True)
    old, new = bm.WORK / f"verify_v1_{vocab}x{embed}.ckpt", bm.WORK / f"verify_v2_{vocab}x{embed}.ckpt"
    if not old.exists():
        bm.run_py(f"import sys, pathlib; sys.path.insert(0, {str(bm.ROOT / 'bench')!r}); import bench_migrate as b; "
                  f"b.build_checkpoint(pathlib.Path({str(old)!r}), {vocab}, {embed}, trainable=True)")
    if not new.exists():
        bm.measure(bm.tool_cmd(old, new))
    return old, new


def tensor_bytes(path: Path) -> int:
    """Bytes of the tensor records of a torch zip checkpoint (what the models and optimizer state hold)."""
    with zipfile.ZipFile(path) as z:
        return sum(i.file_size for i in z.infolist() if "/data/" in i.filename and not i.filename.endswith(".pkl"))


def run(reps: int, vocab: int, embed: int) -> dict:
    big_old, big_new = ensure_pair(vocab, embed)
    tiny_old, tiny_new = ensure_pair(1000, embed)
    copy = bm.WORK / "verify_cp.ckpt"
    for f in (big_old, big_new):
        bm.subprocess.run(["cat", str(f)], stdout=bm.subprocess.DEVNULL, check=True)  # warm the page cache
    rows = []
    for rep in range(reps):
        bm.settle()
        cp = bm.measure(bm.sh(f"cp {big_old} {copy} && sync {copy}"))[0]
        bm.drop_output(copy)
        bm.settle()
        tiny = bm.measure([bm.CLI, "verify", str(tiny_old), str(tiny_new), "-q"])[:2]
        tiny_cpu = bm.LAST_CPU[0]
        bm.settle()
        big = bm.measure([bm.CLI, "verify", str(big_old), str(big_new), "-q"])[:2]
        rows.append({"cp_sync_s": cp, "tiny_s": tiny[0], "tiny_rss_mb": tiny[1], "big_s": big[0],
                     "big_rss_mb": big[1], "marginal_vs_cp": (big[0] - tiny[0]) / cp,
                     "marginal_cpu_s": bm.LAST_CPU[0] - tiny_cpu})
        print(f"  rep {rep + 1}/{reps}: cp+sync {cp:.2f}s, verify tiny {tiny[0]:.2f}s, 1 GB {big[0]:.2f}s "
              f"({big[1]:.0f} MB RssAnon)", flush=True)
    nbytes = tensor_bytes(big_old)
    peak = max(r["big_rss_mb"] for r in rows)
    return {"size_bytes": big_old.stat().st_size, "tensor_bytes": nbytes, "reps": rows,
            "marginal_vs_cp": bm.median([r["marginal_vs_cp"] for r in rows]),
            "marginal_cpu_s": bm.median([r["marginal_cpu_s"] for r in rows]),
            "cp_sync_s": bm.median([r["cp_sync_s"] for r in rows]),
            "peak_rss_anon_mb": peak, "rss_over_tensors": peak * 2**20 / nbytes}


def report(res: dict) -> str:
    reps = res["reps"]
    lines = [f"verify: {res['size_bytes'] / 1e9:.3f} GB v1 BimodalCNN (trainable 800,000 x 300 embedding, "
             f"{res['tensor_bytes'] / 1e9:.3f} GB of tensors), {len(reps)} repetitions", "",
             "| | cp + sync s | verify tiny s | verify 1 GB s | marginal / (cp + sync) | marginal CPU s "
             "| peak RssAnon 1 GB MB |", "|---|---:|---:|---:|---:|---:|---:|"]
    for i, r in enumerate(reps, 1):
        lines.append(f"| rep {i} | {r['cp_sync_s']:.2f} | {r['tiny_s']:.2f} | {r['big_s']:.2f} | "
                     f"{r['marginal_vs_cp']:.2f} | {r['marginal_cpu_s']:.2f} | {r['big_rss_mb']:.0f} |")
    lines += ["", f"marginal verify time / durable copy, median: **{res['marginal_vs_cp']:.2f}x** "
                  f"(goal <= {TIME_GOAL:g}x); peak RssAnon / tensor bytes: **{res['rss_over_tensors']:.2f}x** "
                  f"(goal <= {MEMORY_GOAL:g}x); marginal CPU time (user + sys), median: "
                  f"{res['marginal_cpu_s']:.2f} s = {res['marginal_cpu_s'] / res['cp_sync_s']:.2f}x the durable copy's "
                  "wall time (less sensitive to the load of a shared machine)"]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--vocab", type=int, default=800_000)
    ap.add_argument("--embed", type=int, default=300)
    args = ap.parse_args()
    res = run(args.reps, args.vocab, args.embed)
    (bm.WORK / "verify_results.json").write_text(json.dumps(res, indent=2))
    print(report(res))


if __name__ == "__main__":
    main()
