"""Rename-only migration on a reflink file system vs a durable copy (`make bench`, issue 14 part 2).

Loop-mounts an XFS image made with `mkfs.xfs -m reflink=1` in bench/work/ (root and xfsprogs needed;
skipped with a message otherwise) and, with the ~1 GB v1 BimodalCNN checkpoint of bench_migrate.py
warm in the page cache, times in every repetition, interleaved, on XFS and on the ext4 of bench/work:

- the durable copy: `cp --reflink=never` + `sync FILE` (fsync of the copy), the baseline;
- `athelas-migrate ckpt` on the 1 GB file and on the tiny one (marginal = the difference);
- the same with cloning switched off by patching (`clone_range` refused: today's plain copy path),
  to show the plain path did not get slower and what cloning saves;

plus the new blocks each 1 GB migration allocated (statvfs free blocks before and after), and the cost
of the CRC check of the copied records alone (it stays: it is what catches a corrupted source).
Medians of --reps, with min and max as the noise (the machine is shared). Results: stdout (markdown)
and bench/work/reflink.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_migrate import EPOCH, ROOT, SETS, WORK, ensure_inputs, machine, measure, median, settle, sh, tool_cmd  # noqa: E402

# copy_shared replaced by the plain copy_range of the whole record (what the writer did before cloning: on
# XFS that copies, since copy_file_range remaps only block-aligned ranges and records start mid-block)
NO_CLONE = ("import sys\n"
            "import athelas_migrate.io.zip_archive as z\n"
            "def plain(src_fd, dst_fd, off, size, what, dst=''):\n"
            "    z.copy_range(src_fd, dst_fd, off, size, what, dst)\n"
            "    return 0\n"
            "z.copy_shared = plain\n"
            "from athelas_migrate.cli import main\n"
            "sys.argv = ['athelas-migrate'] + sys.argv[1:]; main()\n")


def plain_cmd(src: Path, dst: Path) -> list[str]:
    """The tool with cloning switched off: the plain copy path of before (not a product option)."""
    return [sys.executable, "-c", NO_CLONE, "ckpt", str(src), str(dst), "--force", *SETS]


def used_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def mount_xfs(size: int) -> Path | None:
    """bench/work/xfs: a fresh loop-mounted XFS with reflink; None (and why, printed) where impossible."""
    if os.geteuid() != 0 or shutil.which("mkfs.xfs") is None:
        print("reflink benchmark skipped: needs root and mkfs.xfs (apt-get install xfsprogs)")
        return None
    img, mnt = WORK / "xfs.img", WORK / "xfs"
    unmount(mnt)
    img.unlink(missing_ok=True)
    with open(img, "wb") as fh:
        fh.truncate(size)  # sparse
    mnt.mkdir(exist_ok=True)
    for cmd in (["mkfs.xfs", "-q", "-f", "-m", "reflink=1", str(img)], ["mount", "-o", "loop", str(img), str(mnt)]):
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            print(f"reflink benchmark skipped: {' '.join(cmd[:2])} failed: {r.stderr.strip()[:200]}")
            return None
    return mnt


def unmount(mnt: Path) -> None:
    if os.path.ismount(mnt):
        subprocess.run(["umount", str(mnt)], check=True)


def crc_seconds(path: Path) -> float:
    """The CRC check of every storage record of `path` alone (what the tool runs beside the copy)."""
    sys.path.insert(0, str(ROOT))
    from athelas_migrate.io.tensor_ref import crc32, read_chunks
    from athelas_migrate.io.zip_archive import read_records

    t0 = time.perf_counter()
    for r in read_records(str(path), path.stat().st_size).values():
        value = 0
        for chunk in read_chunks(str(path), r.offset, r.size, r.name):
            value = crc32(chunk, value)
        assert value == r.crc32
    return time.perf_counter() - t0


def copy_ab(big: Path, where: Path, reps: int) -> dict:
    """The copy alone, in-process, cloning on vs off, alternating: every record of `big` written to `where`
    and fsynced (no CLI start-up in the figure, so the plain path's cost is seen without its noise)."""
    sys.path.insert(0, str(ROOT))
    import athelas_migrate.io.zip_archive as z

    members = [z.Member(r.name, src_path=str(big), src_offset=r.offset, size=r.size, crc32=r.crc32)
               for r in z.read_records(str(big), big.stat().st_size).values()]
    real = z.copy_shared

    def plain(src_fd, dst_fd, off, size, what, dst=""):
        z.copy_range(src_fd, dst_fd, off, size, what, dst)
        return 0

    out: dict[str, list[float]] = {"cloning on": [], "cloning off": []}
    for rep in range(reps):
        pair = [("cloning on", real), ("cloning off", plain)]
        for name, fn in pair[::-1] if rep % 2 else pair:  # alternating which goes first
            z.copy_shared = fn
            settle()
            t0 = time.perf_counter()
            with open(where / "ab.ckpt", "wb") as fh:
                z.write_members(fh, members)
                fh.flush()
                os.fsync(fh.fileno())
            out[name].append(time.perf_counter() - t0)
            (where / "ab.ckpt").unlink()
    z.copy_shared = real
    return {k: {"median_s": median(v), "min_s": min(v), "max_s": max(v)} for k, v in out.items()}


def bench(big: Path, tiny: Path, mnt: Path, reps: int) -> dict:
    ext4 = WORK / "reflink_ext4"
    ext4.mkdir(exist_ok=True)
    places = {"xfs": mnt, "ext4": ext4}
    for d in places.values():
        for f in (big, tiny):
            if not (d / f.name).exists():
                shutil.copyfile(f, d / f.name)
            subprocess.run(["cat", str(d / f.name)], stdout=subprocess.DEVNULL, check=True)  # warm the page cache
    env = {"SOURCE_DATE_EPOCH": EPOCH}
    times: dict[str, list[float]] = {}
    new_blocks: dict[str, list[int]] = {}
    for rep in range(reps):
        for fs, d in places.items():
            src, small = d / big.name, d / tiny.name
            methods = {
                "durable copy (cp + fsync)": sh(f"cp --reflink=never {src} {d}/copy.ckpt && sync {d}/copy.ckpt"),
                "tool (1 GB)": tool_cmd(src, d / "out.ckpt"),
                "tool (tiny)": tool_cmd(small, d / "tiny.ckpt"),
                "tool, cloning off (1 GB)": plain_cmd(src, d / "plain.ckpt"),
                "tool, cloning off (tiny)": plain_cmd(small, d / "plain_tiny.ckpt"),
            }
            for name, cmd in methods.items():
                settle()
                before = used_bytes(d)
                wall, _, _ = measure(cmd, env=env)
                settle()
                times.setdefault(f"{fs}: {name}", []).append(wall)
                new_blocks.setdefault(f"{fs}: {name}", []).append(used_bytes(d) - before)
                for f in ("copy.ckpt", "out.ckpt", "tiny.ckpt", "plain.ckpt", "plain_tiny.ckpt"):
                    (d / f).unlink(missing_ok=True)
        print(f"  repetition {rep + 1}/{reps} done", flush=True)
    size = big.stat().st_size
    res: dict = {"size_bytes": size, "reps": reps, "methods": {}, "fs": {}}
    for key, xs in times.items():
        res["methods"][key] = {"median_s": median(xs), "min_s": min(xs), "max_s": max(xs), "all_s": xs,
                               "new_bytes_median": median(new_blocks[key])}
    for fs in places:
        m = {k.split(": ", 1)[1]: v for k, v in times.items() if k.startswith(fs + ":")}
        copy = m["durable copy (cp + fsync)"]
        marg = [b - t for b, t in zip(m["tool (1 GB)"], m["tool (tiny)"])]
        marg_plain = [b - t for b, t in zip(m["tool, cloning off (1 GB)"], m["tool, cloning off (tiny)"])]
        res["fs"][fs] = {
            "marginal_vs_copy_all": [x / c for x, c in zip(marg, copy)],
            "marginal_vs_copy": median([x / c for x, c in zip(marg, copy)]),
            "marginal_s": median(marg),
            "marginal_plain_s": median(marg_plain),
            "marginal_plain_vs_copy": median([x / c for x, c in zip(marg_plain, copy)]),
            "new_blocks_fraction": median(new_blocks[f"{fs}: tool (1 GB)"]) / size,
            "new_blocks_fraction_plain": median(new_blocks[f"{fs}: tool, cloning off (1 GB)"]) / size,
            "copy_s": median(copy),
        }
    res["crc_s"] = median([crc_seconds(mnt / big.name) for _ in range(3)])
    res["copy_ab_ext4"] = copy_ab(ext4 / big.name, ext4, reps)
    return res


def report(res: dict) -> str:
    lines = [f"checkpoint: {res['size_bytes'] / 1e9:.3f} GB, {res['reps']} repetitions, interleaved", "",
             "| method | wall s (median) | min | max | new blocks (median, MB) |", "|---|---:|---:|---:|---:|"]
    for name, m in res["methods"].items():
        lines.append(f"| {name} | {m['median_s']:.3f} | {m['min_s']:.3f} | {m['max_s']:.3f} | "
                     f"{m['new_bytes_median'] / 1e6:.1f} |")
    lines.append("")
    for fs, f in res["fs"].items():
        lines.append(f"{fs}: marginal 1 GB migration {f['marginal_s']:.3f} s = **{f['marginal_vs_copy']:.3f}x** a "
                     f"durable copy ({f['copy_s']:.2f} s; per repetition "
                     f"{', '.join(f'{x:.3f}' for x in f['marginal_vs_copy_all'])}); cloning off: "
                     f"{f['marginal_plain_s']:.3f} s = {f['marginal_plain_vs_copy']:.3f}x; new blocks "
                     f"**{100 * f['new_blocks_fraction']:.2f}%** of the file (cloning off: "
                     f"{100 * f['new_blocks_fraction_plain']:.1f}%)")
    lines.append("copy alone on ext4, in-process, fsynced (s, median [min-max]): " + "; ".join(
        f"{k} {v['median_s']:.3f} [{v['min_s']:.3f}-{v['max_s']:.3f}]" for k, v in res["copy_ab_ext4"].items()))
    lines.append(f"targets (XFS with reflink): marginal <= 0.25x a durable copy, new blocks <= 2%; ext4: the tool "
                 f"no slower than with cloning off. CRC check of the 1 GB file's records alone (page cache, "
                 f"in-process): {res['crc_s']:.3f} s")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--vocab", type=int, default=800_000)
    ap.add_argument("--embed", type=int, default=300)
    args = ap.parse_args()
    big, tiny = ensure_inputs(args.vocab, args.embed)
    mnt = mount_xfs(4 * big.stat().st_size + (1 << 30))
    if mnt is None:
        return
    try:
        print("timing durable copy / tool on XFS (reflink) and ext4 ...", flush=True)
        res = bench(big, tiny, mnt, args.reps)
    finally:
        unmount(mnt)
        (WORK / "xfs.img").unlink(missing_ok=True)
        shutil.rmtree(WORK / "reflink_ext4", ignore_errors=True)
    res["machine"] = machine()
    (WORK / "reflink.json").write_text(json.dumps(res, indent=2, default=str))
    print()
    print(report(res))


if __name__ == "__main__":
    main()
