"""Worker processes for `batch`: every file is migrated in a child process, one file at a time per worker.

Why not `concurrent.futures.ProcessPoolExecutor`: when one of its workers dies (the OOM killer's SIGKILL, a
SIGBUS from an input truncated under an mmap) the executor breaks and fails every pending file, without
saying which file killed it. Here each worker has its own pipe and holds at most one file, so a death
fails exactly that file (its temporary output is removed) and a fresh worker takes over the rest.
`--jobs 1` uses one such worker too: a crash still yields a summary.

Start method: `fork` (workers inherit the engine the parent imported, ~free to start) only while the parent
is single-threaded and does not hold torch (whose thread pools do not survive a fork); otherwise
`forkserver` (or `spawn`), which starts workers from a clean process.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import wait
from typing import Any

ENGINE_MODULES = ["athelas_migrate.pipeline"]
DEPTH = 2  # tasks per worker: the running one and the next


def start_method(parent_had_torch: bool) -> str:
    """The multiprocessing start method for new workers (see the module docstring).

    Args:
        parent_had_torch: whether the parent holds torch (True also rules out fork for a replacement worker).

    Returns:
        "fork" for a parent that holds neither torch nor a second thread, else "forkserver" or "spawn".
    """
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and not parent_had_torch and threading.active_count() == 1:
        return "fork"
    return "forkserver" if "forkserver" in methods else "spawn"


def death_reason(exitcode: int | None) -> str:
    """Say why a worker ended without answering, for the failed file's record.

    Args:
        exitcode: the process exit code (negative: killed by that signal), or None.

    Returns:
        One line naming the signal and its likely cause, or the exit code.
    """
    if exitcode is not None and exitcode < 0:
        sig = -exitcode
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        hint = {signal.SIGKILL: "out of memory?", signal.SIGBUS: "input truncated or changed while being read?",
                signal.SIGSEGV: "crash"}.get(sig, name)
        return f"worker killed by signal {sig} ({name}: {hint})" if hint != name else \
            f"worker killed by signal {sig} ({name})"
    return f"worker process exited with code {exitcode} without a result"


def _worker_main(conn: Any, init: Callable, initargs: tuple, fn: Callable) -> None:  # pragma: no cover - child
    init(*initargs)
    conn.send(("ready", os.getpid(), "torch" in sys.modules))
    while True:
        try:
            task = conn.recv()
        except EOFError:
            return
        if task is None:
            return
        conn.send(("done", fn(task)))


class _Worker:
    def __init__(self, ctx: Any, fn: Callable, init: Callable, initargs: tuple):
        self.conn, child = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=_worker_main, args=(child, init, initargs, fn), daemon=True)
        self.proc.start()
        child.close()
        self.tasks: deque[dict] = deque()  # sent, not yet answered; the first is the one running


class WorkerPool:
    """`jobs` worker processes running `fn(task)`; `fn` must never raise (failures are records)."""

    def __init__(self, jobs: int, fn: Callable, init: Callable, initargs: tuple, method: str):
        self.fn, self.init, self.initargs, self.method = fn, init, initargs, method
        self.pids: set[int] = set()
        self.torch_pids: set[int] = set()
        self.workers = [self._new(method) for _ in range(jobs)]

    def _new(self, method: str) -> _Worker:
        if method == "forkserver":
            multiprocessing.set_forkserver_preload(ENGINE_MODULES)
        return _Worker(multiprocessing.get_context(method), self.fn, self.init, self.initargs)

    def _replacement(self) -> _Worker:
        # the parent may run threads by now (the progress bar): never fork it then
        return self._new(start_method(parent_had_torch=self.method != "fork"))

    def run(self, tasks: list[dict], on_result: Callable[[dict], None],
            on_death: Callable[[dict, int | None], dict]) -> None:
        """Run every task; `on_result(record)` per finished file, in the calling process.

        Each worker holds up to DEPTH tasks (the one it runs, the next one queued in its pipe, so it never
        waits for the parent) and answers them in order: when it dies, the oldest unanswered task is the
        one it was running, which yields `on_death(task, exitcode)`; the queued ones never started and go
        back to the others.

        Args:
            tasks: one dict per file, as `batch_worker.migrate_one` takes it.
            on_result: called with each file's record.
            on_death: turns the task a dead worker was running, and its exit code, into a failed record.
        """
        pending = deque(tasks)
        idle_deaths = 0
        try:
            while True:
                for w in self.workers:
                    while len(w.tasks) < DEPTH and pending:
                        self._send(w, pending.popleft())
                if not any(w.tasks for w in self.workers):
                    return
                ready = set(wait([w.conn for w in self.workers] + [w.proc.sentinel for w in self.workers]))
                for i, w in enumerate(list(self.workers)):
                    if w.conn not in ready and w.proc.sentinel not in ready:
                        continue
                    msg = self._receive(w)
                    if msg is None:  # the worker died
                        w.proc.join()
                        w.conn.close()
                        if w.tasks:
                            running = w.tasks.popleft()
                            pending.extendleft(reversed(w.tasks))
                            w.tasks.clear()
                            on_result(on_death(running, w.proc.exitcode))
                        else:
                            idle_deaths += 1
                            if idle_deaths > 2 * len(self.workers):
                                raise RuntimeError(f"batch workers die on start ({death_reason(w.proc.exitcode)})")
                        self.workers[i] = self._replacement()
                    elif msg[0] == "ready":
                        self.pids.add(msg[1])
                        if msg[2]:
                            self.torch_pids.add(msg[1])
                    elif msg[0] == "done":
                        w.tasks.popleft()
                        if pending:  # refill before the parent's bookkeeping
                            self._send(w, pending.popleft())
                        rec = msg[1]
                        if rec.get("torch_loaded"):
                            self.torch_pids.add(rec["pid"])
                        on_result(rec)
        finally:
            for w in self.close():
                on_death(w.tasks[0], w.proc.exitcode)  # interrupted: only to remove its temporary output

    @staticmethod
    def _send(w: _Worker, task: dict) -> None:
        w.tasks.append(task)
        try:
            w.conn.send(task)
        except BrokenPipeError:
            pass  # the worker is gone: its sentinel is ready, and the death handling accounts for `task`

    @staticmethod
    def _receive(w: _Worker) -> tuple | None:
        try:
            if w.conn.poll():
                return w.conn.recv()
        except (EOFError, OSError):
            return None
        return None if not w.proc.is_alive() else ("wait",)

    def close(self) -> list[_Worker]:
        """Stop every worker: idle ones are told to exit, busy ones (Ctrl-C, an error) are terminated.

        Returns:
            The workers that were terminated with a task, so the caller can remove their temporary outputs.
        """
        for w in self.workers:
            try:
                if not w.tasks:
                    w.conn.send(None)
                else:
                    w.proc.terminate()
            except OSError:
                pass
        for w in self.workers:
            w.proc.join()
            w.conn.close()
        stopped = [w for w in self.workers if w.tasks]
        self.workers = []
        return stopped


__all__ = ["WorkerPool", "start_method", "death_reason"]
