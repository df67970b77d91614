"""Speed and memory benchmark of migrating a ~1 GB v1 BimodalCNN checkpoint (`make bench`).

Builds (once, in bench/work/, gitignored) a realistic v1 BimodalCNN Trainer checkpoint:
vocabulary 800,000 x 300 frozen float32 word embeddings (960 MB), kernels [3, 5, 7],
two conv layers of 100 channels, 3 tabular fields, SGD momentum buffers for every
trainable parameter (the frozen embedding has none, as after a real run), Lightning
loops/callbacks and v1 whitelisted hyper-parameters; plus a tiny checkpoint built by the
same code (vocabulary 1,000) to measure the tool's fixed cost.

Then, in one run, with the file warm in the page cache, and interleaving the methods in
every repetition (medians of --reps):

- `cp`: the floor (kernel-side copy, no fsync);
- naive: `torch.load` + rename + `torch.save` (what a user script does);
- mmap: `torch.load(mmap=True)` + rename + `torch.save`;
- tool: `athelas-migrate ckpt` as a subprocess, on the 1 GB file and on the tiny one.

Each command runs as a subprocess whose peak `RssAnon` (anonymous memory: mapped file
pages do not count) is sampled from /proc/PID/status every millisecond or so. The tool's
output is checked to load with `torch.load(weights_only=True)` and to equal the naive
result, and to be byte-for-byte deterministic under SOURCE_DATE_EPOCH. Then the fixed
costs (`--help`, a fixture migration), the equivalence runner on the big file (when
`athelas-migrate verify` exists) and `batch --jobs 1` vs `--jobs 2` on 200 small
checkpoints. Results go to stdout (markdown) and bench/work/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / "work"
VENV_BIN = Path(sys.executable).parent
CLI = str(VENV_BIN / "athelas-migrate")
TAB_FIELDS = ["ttm_conc_count", "net_conc_amt", "days_since_first_txn"]
SETS = ["--set", json.dumps(TAB_FIELDS, separators=(",", ":")).join(["tab_field_list=", ""]),
        "--set", "label_name=label"]
OVERRIDES = {"tab_field_list": TAB_FIELDS, "label_name": "label"}
EPOCH = "1700000000"


# ----------------------------------------------------------------------------- building


def build_checkpoint(path: Path, vocab: int, embed: int, seed: int = 0, trainable: bool = False) -> None:
    """A v1 BimodalCNN Trainer checkpoint with a `vocab x embed` frozen (or `trainable`) embedding, saved with
    torch.save. A trainable embedding gets no momentum buffer (the one of the small model has the wrong shape)."""
    import torch

    sys.path.insert(0, str(ROOT))
    from legacy.bimodal_cnn import BimodalCNN

    config = {
        "text_name": "dialogue", "text_input_ids_key": "input_ids", "label_name": "label",
        "tab_field_list": list(TAB_FIELDS), "is_binary": True, "num_classes": 2, "kernel_size": [3, 5, 7],
        "num_layers": 2, "num_channels": [100, 100], "hidden_common_dim": 100, "dropout_keep": 0.5,
        "max_sen_len": 512, "is_embeddings_trainable": trainable, "class_weights": [1.0, 3.5],
        "optimizer_type": "SGD", "lr": 0.02, "momentum": 0.9, "weight_decay": 1e-5, "adam_epsilon": 1e-8,
        "metric_choices": ["accuracy", "f1_score", "auroc"], "model_class": "bimodal_cnn", "embed_size": embed,
        "tokenizer": "bert-base-multilingual-cased", "batch_size": 64, "max_epochs": 3, "warmup_steps": 300,
        "run_scheduler": True, "early_stop_metric": "val/f1_score", "early_stop_patience": 3,
    }
    gen = torch.Generator().manual_seed(seed)
    # the model is built on a small vocabulary (exact key order, realistic initial values) ...
    small = torch.randn(16, embed, generator=gen)
    torch.manual_seed(seed)
    model = BimodalCNN(config, 16, small)
    # ... then trained one SGD step with a frozen embedding, for a real optimizer state
    opt = model.configure_optimizers()
    batch = {"dialogue_input_ids": torch.randint(0, 16, (4, 520), generator=gen), "label": torch.tensor([0, 1, 1, 0])}
    for f in TAB_FIELDS:
        batch[f] = torch.randn(4, generator=gen)
    loss, _, _ = model.run_epoch(batch, "train")
    loss.backward()
    opt.step()
    if trainable:  # SGD then starts the embedding's buffer at its first step, as on a resumed run
        embedding = model.text_subnetwork.embeddings.weight
        opt.state.pop(embedding)
    state = model.state_dict()
    # ... and the embedding is the big pretrained matrix.
    state["text_subnetwork.embeddings.weight"] = torch.randn(vocab, embed, generator=gen) * 0.1
    steps = 12_000
    loop_counts = {"ready": steps, "completed": steps, "started": steps, "processed": steps}
    ckpt = {
        "epoch": 2,
        "global_step": steps,
        "pytorch-lightning_version": "2.6.6",
        "state_dict": state,
        "loops": {"fit_loop": {
            "state_dict": {}, "epoch_loop.state_dict": {"_batches_that_stepped": steps},
            "epoch_loop.batch_progress": {"total": dict(loop_counts), "current": dict(loop_counts),
                                          "is_last_batch": True},
            "epoch_loop.scheduler_progress": {"total": {"ready": 0, "completed": 0},
                                              "current": {"ready": 0, "completed": 0}},
            "epoch_loop.automatic_optimization.state_dict": {},
            "epoch_loop.automatic_optimization.optim_progress": {"optimizer": {
                "step": {"total": {"ready": steps, "completed": steps},
                         "current": {"ready": steps, "completed": steps}},
                "zero_grad": {"total": {"ready": steps, "completed": steps, "started": steps},
                              "current": {"ready": steps, "completed": steps, "started": steps}}}},
            "epoch_loop.manual_optimization.state_dict": {},
            "epoch_loop.val_loop.state_dict": {},
            "epoch_progress": {"total": {"ready": 3, "completed": 2, "started": 3, "processed": 2},
                               "current": {"ready": 3, "completed": 2, "started": 3, "processed": 2}},
        }},
        "callbacks": {
            "ModelCheckpoint{'monitor': 'val/f1_score', 'mode': 'max', 'every_n_train_steps': 0, "
            "'every_n_epochs': 1, 'train_time_interval': None}": {
                "monitor": "val/f1_score", "best_model_score": torch.tensor(0.8731),
                "best_model_path": "/scratch/runs/bimodal/epoch=2-step=12000.ckpt",
                "current_score": torch.tensor(0.8731), "dirpath": "/scratch/runs/bimodal",
                "best_k_models": {}, "kth_best_model_path": "", "kth_value": torch.tensor(float("-inf")),
                "last_model_path": ""},
            "EarlyStopping{'monitor': 'val/f1_score', 'mode': 'max'}": {
                "wait_count": 0, "stopped_epoch": 0, "best_score": torch.tensor(0.8731), "patience": 3},
        },
        "optimizer_states": [opt.state_dict()],
        "lr_schedulers": [],
        "hparams_name": "kwargs",
        "hyper_parameters": dict(model.hparams),
    }
    tmp = path.with_suffix(".tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, path)


def ensure_inputs(vocab: int, embed: int) -> tuple[Path, Path]:
    WORK.mkdir(parents=True, exist_ok=True)
    big = WORK / f"bimodal_v1_{vocab}x{embed}.ckpt"
    tiny = WORK / f"bimodal_v1_1000x{embed}.ckpt"
    for path, v in ((big, vocab), (tiny, 1000)):
        if not path.exists():
            free = shutil.disk_usage(WORK).free
            need = v * embed * 4 * 4  # source + three outputs at a time
            if free < need:
                sys.exit(f"not enough disk space in {WORK}: {free / 1e9:.1f} GB free, {need / 1e9:.1f} GB needed")
            t0 = time.perf_counter()
            run_py(f"import sys; sys.path.insert(0, {str(ROOT / 'bench')!r}); import bench_migrate as b; "
                   f"b.build_checkpoint(__import__('pathlib').Path({str(path)!r}), {v}, {embed})")
            print(f"built {path.name} ({path.stat().st_size / 1e9:.3f} GB) in {time.perf_counter() - t0:.1f} s",
                  flush=True)
    return big, tiny


def run_py(code: str) -> None:
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# ----------------------------------------------------------------------------- measuring


LAST_CPU = [0.0]


def _rss_anon_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return 0


def measure(cmd: list[str], env: dict | None = None, check: bool = True) -> tuple[float, float, str]:
    """(wall seconds, peak RssAnon MB, combined output) of running `cmd`, sampling /proc every ~1 ms.
    The CPU seconds (user + sys, children included) of the last call are in LAST_CPU[0]."""
    full_env = dict(os.environ, **(env or {}))
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=full_env, cwd=ROOT)
    peak = [0]

    def sample() -> None:
        while proc.poll() is None:
            kb = _rss_anon_kb(proc.pid)
            if kb:
                peak[0] = max(peak[0], kb)
            time.sleep(0.001)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, _ = proc.communicate()
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    LAST_CPU[0] = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    th.join()
    text = out.decode(errors="replace")
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{text[-3000:]}")
    return wall, peak[0] / 1024, text


# The naive and mmap approaches: what a user script does with torch alone. The key mapping and
# new hyper-parameters come from the tool's plan (so all approaches write the same content); the
# tensors go through torch.load / torch.save.
TORCH_SCRIPT = r"""
import os, sys, torch
from collections import OrderedDict
sys.path.insert(0, {root!r})
from athelas_migrate.io.reader import read_checkpoint
from athelas_migrate.io.tensor_ref import TensorRef
from athelas_migrate.pipeline import plan_and_apply
src, dst, mmap = sys.argv[1], sys.argv[2], sys.argv[3] == "mmap"
loaded = torch.load(src, mmap=mmap, weights_only=True, map_location="cpu")
raw = read_checkpoint(src)
refs = {{}}
def pair(a, b):  # the same object graph read two ways: TensorRef -> torch tensor
    if isinstance(a, TensorRef):
        refs[id(a)] = b
    elif isinstance(a, dict):
        for k in a:
            pair(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        for x, y in zip(a, b):
            pair(x, y)
pair(raw.top, loaded)
result = plan_and_apply(src, overrides={overrides!r}, raw=raw)
def swap(o):
    if isinstance(o, TensorRef):
        return refs[id(o)]
    if isinstance(o, OrderedDict):
        return OrderedDict((k, swap(v)) for k, v in o.items())
    if isinstance(o, dict):
        return {{k: swap(v) for k, v in o.items()}}
    if isinstance(o, list):
        return [swap(v) for v in o]
    if isinstance(o, tuple):
        return tuple(swap(v) for v in o)
    return o
torch.save(swap(result.checkpoint), dst)
"""


def torch_cmd(src: Path, dst: Path, mode: str) -> list[str]:
    code = TORCH_SCRIPT.format(root=str(ROOT), overrides=OVERRIDES)
    return [sys.executable, "-c", code, str(src), str(dst), mode]


def tool_cmd(src: Path, dst: Path) -> list[str]:
    return [CLI, "ckpt", str(src), str(dst), "--force", *SETS]


def variant_cmd(src: Path, dst: Path, flags: str) -> list[str]:
    """The tool with parts switched off by patching, to show what each costs (not product options):
    `nocrc`: no CRC check of the copied records; `nofsync`: no fsync and no early writeback."""
    code = ("import os, sys\n"
            "flags = sys.argv.pop(1).split(',')\n"
            "if 'nocrc' in flags:\n"
            "    from athelas_migrate.io.tensor_ref import StorageRef; StorageRef.verify = lambda self: None\n"
            "if 'nofsync' in flags:\n"
            "    import athelas_migrate.io.zip_archive as z; os.fsync = lambda fd: None\n"
            "    z._advise = lambda fd, off, n, advice, a=z._advise: None if advice.endswith('DONTNEED') "
            "else a(fd, off, n, advice)\n"
            "from athelas_migrate.cli import main\n"
            "sys.argv = ['athelas-migrate'] + sys.argv[1:]; main()\n")
    return [sys.executable, "-c", code, flags, "ckpt", str(src), str(dst), "--force", *SETS]


def sh(cmd: str) -> list[str]:
    return ["bash", "-c", cmd]


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def drop_output(path: Path) -> None:
    if path.exists():
        path.unlink()


def settle() -> None:
    """Flush dirty pages of the previous writer so that they do not bill the next command."""
    os.sync()
    time.sleep(0.2)


def bench_big(big: Path, tiny: Path, reps: int, slow_reps: int = 3) -> dict:
    out = WORK / "out"
    out.mkdir(exist_ok=True)
    env = {"SOURCE_DATE_EPOCH": EPOCH}
    subprocess.run(["cat", str(big)], stdout=subprocess.DEVNULL, check=True)  # warm the page cache
    methods = {
        "cp": lambda: ["cp", str(big), str(out / "cp.ckpt")],
        "cp + fsync": lambda: sh(f"cp {big} {out / 'cpsync.ckpt'} && sync {out / 'cpsync.ckpt'}"),
        "naive torch.load + torch.save": lambda: torch_cmd(big, out / "naive.ckpt", "load"),
        "mmap torch.load + torch.save": lambda: torch_cmd(big, out / "mmap.ckpt", "mmap"),
        "athelas-migrate ckpt (1 GB)": lambda: tool_cmd(big, out / "tool.ckpt"),
        "athelas-migrate ckpt (tiny)": lambda: tool_cmd(tiny, out / "tiny.ckpt"),
        "breakdown: tool without CRC check": lambda: variant_cmd(big, out / "v1.ckpt", "nocrc"),
        "breakdown: tool without fsync": lambda: variant_cmd(big, out / "v2.ckpt", "nofsync"),
        "breakdown: tool, copy only (no CRC, no fsync)": lambda: variant_cmd(big, out / "v3.ckpt", "nocrc,nofsync"),
    }
    outputs = {"cp": "cp.ckpt", "cp + fsync": "cpsync.ckpt", "naive torch.load + torch.save": "naive.ckpt",
               "mmap torch.load + torch.save": "mmap.ckpt", "athelas-migrate ckpt (1 GB)": "tool.ckpt",
               "athelas-migrate ckpt (tiny)": "tiny.ckpt", "breakdown: tool without CRC check": "v1.ckpt",
               "breakdown: tool without fsync": "v2.ckpt",
               "breakdown: tool, copy only (no CRC, no fsync)": "v3.ckpt"}
    slow = ("naive torch.load + torch.save", "mmap torch.load + torch.save")
    times: dict[str, list[float]] = {m: [] for m in methods}
    cpus: dict[str, list[float]] = {m: [] for m in methods}
    rss: dict[str, list[float]] = {m: [] for m in methods}
    for rep in range(reps):
        for name, make in methods.items():
            if name in slow and rep >= slow_reps and rep != reps - 1:
                continue  # the torch approaches take 10-20x longer: fewer repetitions (the last one always runs)
            settle()
            wall, peak, _ = measure(make(), env)
            times[name].append(wall)
            cpus[name].append(LAST_CPU[0])
            rss[name].append(peak)
            if rep < reps - 1 or name not in ("naive torch.load + torch.save", "athelas-migrate ckpt (1 GB)"):
                drop_output(out / outputs[name])
        print(f"  rep {rep + 1}/{reps}: " + ", ".join(f"{n[:16]}.. {times[n][-1]:.2f}s" for n in methods
                                                      if times[n]), flush=True)
    res = {"size_bytes": big.stat().st_size, "reps": reps,
           "methods": {m: {"median_s": median(times[m]), "all_s": times[m], "min_s": min(times[m]),
                           "median_cpu_s": median(cpus[m]), "peak_rss_anon_mb": max(rss[m]),
                           "median_rss_anon_mb": median(rss[m])} for m in methods}}
    cp = res["methods"]["cp"]["median_s"]
    tool = times["athelas-migrate ckpt (1 GB)"]
    tiny_t = times["athelas-migrate ckpt (tiny)"]
    # marginal cost within each repetition, then the median (the brief's definition, noise-robust)
    per_rep = [(a - b) / c for a, b, c in zip(tool, tiny_t, times["cp"])]
    res["marginal_vs_cp"] = median(per_rep)
    res["marginal_vs_cp_all"] = per_rep
    res["marginal_vs_cp_of_medians"] = (median(tool) - median(tiny_t)) / cp
    res["marginal_vs_cp_of_mins"] = (min(tool) - min(tiny_t)) / min(times["cp"])
    c_tool, c_tiny, c_cp = (cpus[k] for k in ("athelas-migrate ckpt (1 GB)", "athelas-migrate ckpt (tiny)", "cp"))
    res["marginal_cpu_vs_cp_cpu"] = median([(a - b) / c for a, b, c in zip(c_tool, c_tiny, c_cp)])
    cps = res["methods"]["cp + fsync"]["median_s"]
    res["marginal_vs_cp_fsync"] = median([(a - b) / c for a, b, c in zip(tool, tiny_t, times["cp + fsync"])])
    res["breakdown_marginal_vs_cp"] = {
        k: median([(a - b) / c for a, b, c in zip(times[k], tiny_t, times["cp"])])
        for k in methods if k.startswith("breakdown")}
    res["naive_over_tool"] = res["methods"]["naive torch.load + torch.save"]["median_s"] / median(tool)
    res["cp_s"], res["cp_fsync_s"] = cp, cps
    return res


def check_outputs(big: Path) -> dict:
    """The tool's output loads with weights_only=True, equals the naive result, and is deterministic."""
    out = WORK / "out"
    tool, naive = out / "tool.ckpt", out / "naive.ckpt"
    code = r"""
import sys, torch
a = torch.load(sys.argv[1], mmap=True, weights_only=True)
b = torch.load(sys.argv[2], mmap=True, weights_only=True)
def eq(x, y, path="ckpt"):
    if isinstance(x, torch.Tensor):
        assert isinstance(y, torch.Tensor) and x.dtype == y.dtype and x.shape == y.shape, path
        assert torch.equal(x, y), path
        return 1
    assert type(x) is type(y), (path, type(x), type(y))
    if isinstance(x, dict):
        assert list(x) == list(y), (path, list(x)[:5], list(y)[:5])
        return sum(eq(x[k], y[k], f"{path}.{k}") for k in x)
    if isinstance(x, (list, tuple)):
        assert len(x) == len(y), path
        return sum(eq(p, q, f"{path}[{i}]") for i, (p, q) in enumerate(zip(x, y)))
    assert x == y or (x != x and y != y), (path, x, y)
    return 0
n = eq(a, b)
print(n, list(a["state_dict"])[:3])
"""
    _, _, text = measure([sys.executable, "-c", code, str(tool), str(naive)])
    n_tensors = int(text.split()[0])
    # determinism: a second run gives the same bytes
    second = out / "tool2.ckpt"
    measure(tool_cmd(big, second), {"SOURCE_DATE_EPOCH": EPOCH})
    sys.path.insert(0, str(ROOT))
    from athelas_migrate.pipeline import file_sha256

    same = file_sha256(str(tool)) == file_sha256(str(second))
    drop_output(second)
    return {"equal_to_naive": True, "tensors_compared": n_tensors, "deterministic": same}


def tool_imports_torch(tiny: Path) -> bool:
    code = ("import sys; from athelas_migrate.api import migrate; "
            f"migrate({str(tiny)!r}, {str(WORK / 'out' / 'imp.ckpt')!r}, overrides={OVERRIDES!r}, force=True); "
            "print('torch' in sys.modules)")
    _, _, text = measure([sys.executable, "-c", code])
    drop_output(WORK / "out" / "imp.ckpt")
    return text.strip().splitlines()[-1] == "True"


SUSPECTS = r"""
import json, statistics, sys, time, zlib
from athelas_migrate.io.reader import read_checkpoint
from athelas_migrate.io.tensor_ref import _mapped, crc32
from athelas_migrate.pipeline import file_sha256, nonfinite_tensors, structural_sha256
path = sys.argv[1]
raw = read_checkpoint(path)
view = _mapped(path)
def t(f, *a):
    out = []
    for _ in range(3):
        t0 = time.perf_counter(); f(*a); out.append(time.perf_counter() - t0)
    return statistics.median(out)
res = {
    "full-file sha256 (hashlib)": t(file_sha256, path),
    "structural sha256 (records' CRC32s + data.pkl)": t(structural_sha256, path),
    "NaN/Inf scan of every float tensor (numpy, chunked)": t(nonfinite_tensors, raw.state_dict),
    "NaN/Inf scan of tensors changed by tensor ops only": t(nonfinite_tensors, raw.state_dict, True),
    "CRC32 of the whole file, zlib " + zlib.ZLIB_RUNTIME_VERSION: t(zlib.crc32, view),
}
from athelas_migrate.io.tensor_ref import _CRC32
res["CRC32 of the whole file, as the writer checks it (" + str(_CRC32[0].__module__) + ")"] = t(crc32, view)
try:
    from isal.isal_zlib import crc32 as icrc
    res["CRC32 of the whole file, ISA-L (isal package)"] = t(icrc, view)
except ImportError:
    pass
print(json.dumps(res))
"""


def bench_suspects(big: Path) -> dict:
    """What each whole-file pass would cost on the 1 GB file (in-process, warm cache, medians of 3)."""
    _, _, text = measure([sys.executable, "-c", SUSPECTS, str(big)])
    return json.loads(text.strip().splitlines()[-1])


def bench_fixed(reps: int) -> dict:
    helps = [measure([CLI, "--help"])[0] for _ in range(reps)]
    fixture = ROOT / "fixtures" / "bimodal_cnn_v1.ckpt"
    dst = WORK / "out" / "fixture_v2.ckpt"
    mig = []
    for _ in range(reps):
        mig.append(measure(tool_cmd(fixture, dst))[0])
    drop_output(dst)
    return {"help_s": median(helps), "help_all_s": helps, "fixture_migrate_s": median(mig), "fixture_all_s": mig}


def bench_verify(big: Path) -> dict:
    _, _, text = measure([CLI, "--help"])
    if " verify " not in text and "\n  verify" not in text:
        return {"available": False}
    tool = WORK / "out" / "tool.ckpt"
    try:
        wall, peak, text = measure([CLI, "verify", str(big), str(tool)], check=False)
    except Exception as exc:  # pragma: no cover - reported, not fatal
        return {"available": True, "error": str(exc)}
    return {"available": True, "wall_s": wall, "peak_rss_anon_mb": peak, "tail": text.strip().splitlines()[-3:]}


def bench_batch(n: int, reps: int) -> dict:
    src = WORK / "batch_src"
    if src.exists():
        shutil.rmtree(src)
    fixture = ROOT / "fixtures" / "bimodal_cnn_v1.ckpt"
    for i in range(n):
        d = src / f"run{i % 10:02d}"
        d.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(fixture, d / f"ckpt_{i:03d}.ckpt")
    res: dict = {"checkpoints": n, "jobs": {}}
    walls: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(reps):
        for jobs in (1, 2):  # interleaved, so that a burst of load elsewhere hits both alike
            dst = WORK / f"batch_out_{jobs}"
            if dst.exists():
                shutil.rmtree(dst)
            settle()
            wall, _, text = measure([CLI, "batch", str(src), str(dst), "--jobs", str(jobs), "--force", *SETS])
            walls[jobs].append(wall)
            shutil.rmtree(dst)
    for jobs in (1, 2):
        res["jobs"][jobs] = {"median_s": median(walls[jobs]), "all_s": walls[jobs], "min_s": min(walls[jobs]),
                             "per_s": n / median(walls[jobs])}
    res["speedup_per_rep"] = [a / b for a, b in zip(walls[1], walls[2])]
    res["speedup_of_mins"] = min(walls[1]) / min(walls[2])
    res["speedup"] = res["jobs"][1]["median_s"] / res["jobs"][2]["median_s"]
    shutil.rmtree(src)
    return res


def machine() -> dict:
    cpu = {}
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if ":" in line:
                k, v = (s.strip() for s in line.split(":", 1))
                cpu.setdefault(k, v)
    free = subprocess.run(["free", "-m"], capture_output=True, text=True).stdout
    return {"cpu": cpu.get("model name"), "cores": os.cpu_count(), "free_m": free.strip(),
            "kernel": os.uname().release, "python": sys.version.split()[0]}


def report(res: dict) -> str:
    lines = []
    if "big" in res:
        b = res["big"]
        cp = b["cp_s"]
        lines += [f"checkpoint: {b['size_bytes'] / 1e9:.3f} GB, {b['reps']} repetitions (medians)", "",
                  "| method | wall s (median) | wall s (min) | x cp | CPU s (median) | peak RssAnon MB |",
                  "|---|---:|---:|---:|---:|---:|"]
        for name, m in b["methods"].items():
            lines.append(f"| {name} | {m['median_s']:.2f} | {m['min_s']:.2f} | {m['median_s'] / cp:.2f} | "
                         f"{m['median_cpu_s']:.2f} | {m['peak_rss_anon_mb']:.0f} |")
        lines += ["", f"marginal cost (t(tool 1 GB) - t(tool tiny)) / t(cp), per repetition, median: "
                      f"**{b['marginal_vs_cp']:.2f}x** (target <= 1.5x; all: "
                      f"{', '.join(f'{x:.2f}' for x in b['marginal_vs_cp_all'])})",
                  f"same from the fastest run of each: {b['marginal_vs_cp_of_mins']:.2f}x; "
                  f"in CPU time (user+sys): {b['marginal_cpu_vs_cp_cpu']:.2f}x",
                  f"same, against `cp` + fsync of the copy: {b['marginal_vs_cp_fsync']:.2f}x",
                  "breakdown (marginal cost / cp, per-repetition medians): " + "; ".join(
                      f"{k.split(': ', 1)[1]} {v:.2f}x" for k, v in b["breakdown_marginal_vs_cp"].items()),
                  f"naive / tool: {b['naive_over_tool']:.1f}x"]
    if "checks" in res:
        c = res["checks"]
        lines.append(f"output equals the naive result ({c['tensors_compared']} tensors compared): "
                     f"{c['equal_to_naive']}; byte-for-byte deterministic: {c['deterministic']}")
    if "torch_imported" in res:
        lines.append(f"rename-only migration imports torch: {res['torch_imported']}")
    if "suspects" in res:
        lines += ["", "| whole-file pass on the 1 GB file | s |", "|---|---:|"]
        lines += [f"| {k} | {v:.3f} |" for k, v in res["suspects"].items()]
        lines.append("")
    if "fixed" in res:
        f = res["fixed"]
        lines.append(f"`athelas-migrate --help`: {f['help_s']:.3f} s; fixture migration (CLI, end to end): "
                     f"{f['fixture_migrate_s']:.3f} s")
    if "verify" in res:
        v = res["verify"]
        if not v.get("available"):
            lines.append("`athelas-migrate verify`: not available in this tree")
        elif "wall_s" in v:
            lines.append(f"`athelas-migrate verify` on the 1 GB pair: {v['wall_s']:.2f} s, "
                         f"peak RssAnon {v['peak_rss_anon_mb']:.0f} MB ({' / '.join(v['tail'])})")
        else:
            lines.append(f"`athelas-migrate verify`: {v.get('error')}")
    if "batch" in res:
        bt = res["batch"]
        j1, j2 = bt["jobs"][1], bt["jobs"][2]
        lines.append(f"batch of {bt['checkpoints']} fixture checkpoints: --jobs 1 {j1['median_s']:.2f} s "
                     f"({j1['per_s']:.1f}/s), --jobs 2 {j2['median_s']:.2f} s ({j2['per_s']:.1f}/s): "
                     f"**{bt['speedup']:.2f}x** (target >= 1.7x; per repetition: "
                     f"{', '.join(f'{x:.2f}' for x in bt['speedup_per_rep'])}; fastest runs: "
                     f"{bt['speedup_of_mins']:.2f}x)")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=7, help="repetitions of cp and the tool")
    ap.add_argument("--slow-reps", type=int, default=3, help="repetitions of the torch.load/torch.save approaches")
    ap.add_argument("--vocab", type=int, default=800_000)
    ap.add_argument("--embed", type=int, default=300)
    ap.add_argument("--batch-n", type=int, default=200)
    ap.add_argument("--skip", nargs="*", default=[], choices=["big", "checks", "suspects", "fixed", "verify", "batch"])
    ap.add_argument("--clean", action="store_true", help="delete bench/work afterwards")
    args = ap.parse_args()
    res: dict = {"machine": machine()}
    big, tiny = ensure_inputs(args.vocab, args.embed)
    (WORK / "out").mkdir(parents=True, exist_ok=True)
    if "big" not in args.skip:
        print("timing cp / naive / mmap / tool ...", flush=True)
        res["big"] = bench_big(big, tiny, args.reps, args.slow_reps)
        if "checks" not in args.skip:
            res["checks"] = check_outputs(big)
    res["torch_imported"] = tool_imports_torch(tiny)
    if "suspects" not in args.skip:
        res["suspects"] = bench_suspects(big)
    if "fixed" not in args.skip:
        res["fixed"] = bench_fixed(args.reps)
    if "verify" not in args.skip and (WORK / "out" / "tool.ckpt").exists():
        res["verify"] = bench_verify(big)
    if "batch" not in args.skip:
        print("timing batch --jobs 1 / 2 ...", flush=True)
        res["batch"] = bench_batch(args.batch_n, max(1, min(args.reps, 5)))
    (WORK / "results.json").write_text(json.dumps(res, indent=2, default=str))
    print()
    print(f"machine: {res['machine']['cpu']}, {res['machine']['cores']} cores")
    print(report(res))
    shutil.rmtree(WORK / "out", ignore_errors=True)  # the outputs (several GB); the inputs are kept for reruns
    if args.clean:
        shutil.rmtree(WORK)


if __name__ == "__main__":
    main()
