"""A small pool of worker processes for the CPU-bound stages of inference (image
decoding, proposals, the dense CRF), driven by one main process.

Why not ``multiprocessing.Pool`` or ``concurrent.futures``: the main process must be
able to (1) hand out work without blocking while a worker is busy (tasks go through a
``multiprocessing.Queue``, whose feeder thread does the writing), (2) notice a worker
that died (killed for memory, a crash in native code) instead of waiting forever, and
(3) stop every worker at once on Ctrl-C or on the first error, with no traceback from
each of them. Workers ignore SIGINT (a terminal's Ctrl-C reaches the whole process
group): the main process alone gets KeyboardInterrupt and terminates them.

    with WorkerPool(4, state) as pool:           # state: sent to (or inherited by) workers
        task = pool.submit(fn, arg1, arg2)       # worker runs fn(state, arg1, arg2)
        task_id, value = pool.next_result()      # whichever task finishes first

A task that raises re-raises its exception in the main process from ``next_result``
(``WorkerError`` when the exception cannot be pickled), with the worker's traceback
attached as ``__cause__``.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import pickle
import queue
import signal
import sys
import threading
import traceback
from typing import Any, Callable, Dict, Optional, Tuple


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def default_workers() -> int:
    """The default ``--workers``: the usable cores, shared between the processes that
    ``torchrun`` started on this machine (LOCAL_WORLD_SIZE)."""
    local_world = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, usable_cores() // local_world)


DEFAULT_NETWORK_THREADS = 1


def add_parallel_arguments(parser: argparse.ArgumentParser) -> None:
    """``--workers N`` and ``--network-threads T`` (``deconvnet eval``, ``predict``,
    ``demo``)."""
    parser.add_argument("--workers", type=int, default=None,
                        help="processes for image decoding, proposals and the dense CRF, "
                             "overlapped with the network in the main process; 1 runs "
                             "everything in one process (default: the usable CPU cores, "
                             f"{default_workers()} here, split between torchrun's "
                             "processes on a machine)")
    parser.add_argument("--network-threads", type=int, default=DEFAULT_NETWORK_THREADS,
                        help="CPU threads of the network's forward in the main process "
                             "(default %(default)s: the cores go to the workers). Results "
                             "are bit-identical for any --workers and any number of "
                             "torchrun ranks at a given value; a different value changes "
                             "torch's CPU convolution rounding, so keep it fixed to compare")


def parallel_options(args: argparse.Namespace) -> dict:
    """{"workers": N, "network_threads": T} from ``add_parallel_arguments``' options, for
    ``evaluate_dataset`` / ``StreamedPredictions``; UserError on a value below 1."""
    from .errors import UserError
    workers = getattr(args, "workers", None)
    workers = default_workers() if workers is None else workers
    threads = getattr(args, "network_threads", DEFAULT_NETWORK_THREADS)
    for flag, value in (("--workers", workers), ("--network-threads", threads)):
        if value < 1:
            raise UserError(f"{flag} must be >= 1, got {value}")
    return {"workers": workers, "network_threads": threads}


def _raise_terminated(signum, frame) -> None:
    from .errors import Terminated
    raise Terminated()


class WorkerError(RuntimeError):
    """A task failed in a worker with an exception that could not be sent back as is."""


class RemoteTraceback(Exception):
    """The worker-side traceback of a failed task (the ``__cause__`` of its error)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return "\n" + self.text


# Imported once by the fork server, so that each worker it forks starts in milliseconds
# with torch, OpenCV and the CRF already loaded.
WORKER_POLL_S = 2.0  # how often an idle worker checks that its main process is alive

# Workers run at this niceness above the main process (DECONVNET_WORKER_NICE overrides).
# The main process runs the network, the one serial stage: with as many workers as
# cores plus the main process there are more runnable processes than cores, and a
# main process that waits for a core starves every worker of images. Measured on 2
# cores (deconvnet eval with CRF, the demo's 50 val images, 5 interleaved rounds):
# 2 workers ran 1.40x faster than 1 at niceness 0 and 1.53x at 10 (medians).
WORKER_NICENESS = 10


def worker_niceness() -> int:
    value = os.environ.get("DECONVNET_WORKER_NICE")
    return WORKER_NICENESS if value in (None, "") else int(value)

FORKSERVER_PRELOAD = ["deconvnet_ext.pipeline", "deconvnet_ext.proposals",
                      "deconvnet_ext.data.voc", "pydensecrf.densecrf"]


def _start_method() -> str:
    """forkserver where there is one (Linux, macOS), else spawn; DECONVNET_START_METHOD
    overrides. Not fork: a process that has already run OpenCV's or OpenMP's thread
    pools (the demo's training, an earlier in-process evaluation, CUDA) hands a forked
    child locks held by threads that do not exist there, and the child hangs in its
    first ``cv2.setNumThreads`` or parallel loop. The fork server is a clean process
    started once (``prestart``), so only the first pool pays for its imports."""
    override = os.environ.get("DECONVNET_START_METHOD")
    if override:
        return override
    return "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"


def _context(method: str):
    ctx = mp.get_context(method)
    if method == "forkserver":
        ctx.set_forkserver_preload(FORKSERVER_PRELOAD)
    return ctx


def worker_context(start_method: Optional[str] = None):
    """The multiprocessing context of worker processes, this module's pools and the
    trainer's DataLoader workers alike: ``start_method``, else ``_start_method``'s
    (never fork by default: see there; Python 3.12 also warns when a multi-threaded
    process forks)."""
    return _context(start_method or _start_method())


def prestart(start_method: Optional[str] = None) -> None:
    """Start the fork server now (it imports torch and the rest in the background while
    the caller loads its data and models), ignoring Ctrl-C like the workers it forks."""
    method = start_method or _start_method()
    if method != "forkserver":
        return
    _context(method)
    from multiprocessing import forkserver
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        forkserver.ensure_running()
    finally:
        signal.signal(signal.SIGINT, previous)


def _main_is_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # pragma: no cover - a reused pid of another user
        return True
    return False


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when its parent (the fork server, which leaves when
    the main process has gone; or the main process itself under spawn) exits, so a
    worker in the middle of a long task does not outlive a killed run."""
    # The fork server leaves once every client has closed its "alive" pipe, and it
    # hands that pipe to each child it forks as well: a worker that kept it would keep
    # the fork server, its parent, alive, and so itself. Workers fork nothing.
    try:
        from multiprocessing import forkserver
        server = forkserver._forkserver
        if getattr(server, "_forkserver_alive_fd", None) is not None \
                and mp.current_process().name.startswith("deconvnet-worker"):
            os.close(server._forkserver_alive_fd)
            server._forkserver_alive_fd = None
    except (AttributeError, OSError):  # pragma: no cover - another Python's internals
        pass
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    try:
        import ctypes
        ctypes.CDLL(None).prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG
    except Exception:  # pragma: no cover - no libc prctl: the polling below remains
        return
    if os.getppid() != parent:  # the parent left before prctl took effect
        os._exit(0)


def _worker_main(state: Any, tasks, results, main_pid: int, niceness: int = 0) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process handles Ctrl-C
    _die_with_parent()
    if niceness > 0:
        try:
            os.nice(niceness)
        except OSError:  # pragma: no cover - not permitted: run at the same priority
            pass
    try:  # one thread per worker: the pool is the parallelism
        import torch
        torch.set_num_threads(1)
    except Exception:  # pragma: no cover - torch is a dependency
        pass
    try:
        import cv2
        cv2.setNumThreads(1)
    except Exception:  # pragma: no cover - OpenCV is a dependency
        pass
    while True:
        # A worker is the fork server's child, not the main process's: if the main
        # process dies without stopping the pool (SIGKILL, a crash), nobody would send
        # the None that ends this loop, so it looks for its main process now and then.
        try:
            item = tasks.get(timeout=WORKER_POLL_S)
        except queue.Empty:
            if _main_is_gone(main_pid):
                os._exit(0)
            continue
        except (EOFError, OSError):  # the queue's other end is gone
            os._exit(0)
        if item is None:
            break
        if _main_is_gone(main_pid):  # the queue may still hold work nobody will read
            os._exit(0)
        task_id, fn, args = item
        try:
            value = fn(state, *args)
        except BaseException as exc:  # noqa: BLE001 - everything goes back to the main
            text = traceback.format_exc()
            try:
                pickle.dumps(exc)
            except Exception:
                exc = WorkerError(f"{type(exc).__name__}: {exc}")
            results.put((task_id, False, (exc, text)))
        else:
            results.put((task_id, True, value))
    results.close()
    results.join_thread()


class WorkerPool:
    """``processes`` worker processes that run ``fn(state, *args)`` tasks.

    ``state`` is given to every worker once (pickled for spawn/forkserver, inherited
    with fork): put there what every task needs (a dataset, a configuration).
    ``fn`` must be a module-level function (it is sent by reference)."""

    def __init__(self, processes: int, state: Any = None,
                 start_method: Optional[str] = None) -> None:
        if processes < 1:
            raise ValueError(f"processes must be >= 1, got {processes}")
        self.start_method = start_method or _start_method()
        ctx = worker_context(self.start_method)
        self._tasks = ctx.Queue()
        self._results = ctx.Queue()
        self._next_id = 0
        self._pending: Dict[int, Any] = {}
        self._closed = False
        self._processes = []
        # Children inherit "ignore SIGINT" from the moment they exist (spawned ones
        # too: Python keeps an inherited SIG_IGN), not only once _worker_main runs.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            for i in range(processes):
                p = ctx.Process(target=_worker_main,
                                args=(state, self._tasks, self._results, os.getpid(),
                                      worker_niceness()),
                                name=f"deconvnet-worker-{i}", daemon=True)
                p.start()
                self._processes.append(p)
        except BaseException:
            self.terminate()
            raise
        finally:
            signal.signal(signal.SIGINT, previous)

    @property
    def processes(self) -> int:
        return len(self._processes)

    @property
    def pids(self) -> list:
        return [p.pid for p in self._processes]

    def submit(self, fn: Callable, *args: Any) -> int:
        """Queue ``fn(state, *args)``; returns its task id at once."""
        if self._closed:
            raise RuntimeError("the pool is closed")
        task_id = self._next_id
        self._next_id += 1
        self._pending[task_id] = fn
        self._tasks.put((task_id, fn, args))
        return task_id

    @property
    def in_flight(self) -> int:
        """Tasks submitted whose result has not been returned yet."""
        return len(self._pending)

    def next_result(self, poll_s: float = 0.5) -> Tuple[int, Any]:
        """(task id, value) of the next task to finish, whichever it is. Re-raises a
        task's exception; raises WorkerError when a worker process died."""
        if not self._pending:
            raise RuntimeError("next_result: no task in flight")
        while True:
            try:
                task_id, ok, payload = self._results.get(timeout=poll_s)
            except queue.Empty:
                dead = [p for p in self._processes if not p.is_alive()]
                if dead:
                    code = dead[0].exitcode
                    why = (f"killed by signal {-code}" if code is not None and code < 0
                           else f"exit code {code}")
                    hint = " (out of memory?)" if code == -signal.SIGKILL else ""
                    raise WorkerError(f"a worker process died ({why}){hint}; "
                                      f"{len(self._pending)} task(s) unfinished")
                continue
            self._pending.pop(task_id, None)
            if ok:
                return task_id, payload
            exc, text = payload
            raise exc from RemoteTraceback(text)

    def close(self, timeout_s: float = 10.0) -> None:
        """Let the workers finish their current task and exit (terminating any that
        do not within ``timeout_s``)."""
        if self._closed:
            return
        self._closed = True
        for _ in self._processes:
            self._tasks.put(None)
        for p in self._processes:
            p.join(timeout_s)
        self.terminate()

    def terminate(self) -> None:
        """Stop every worker now (SIGTERM, then SIGKILL if one lingers) and release the
        queues without waiting for data nobody will read."""
        self._closed = True
        for p in self._processes:
            if p.is_alive():
                p.terminate()
        for p in self._processes:
            p.join(5.0)
            if p.is_alive():  # pragma: no cover - SIGTERM is not ignored by workers
                p.kill()
                p.join(5.0)
        for q in (self._tasks, self._results):
            q.cancel_join_thread()
            q.close()
        self._pending.clear()

    def __enter__(self) -> "WorkerPool":
        # SIGTERM (a job scheduler, `kill`) would end this process at once and leave
        # the workers running: while the pool is open it raises errors.Terminated, a
        # KeyboardInterrupt, so the clean-up of Ctrl-C runs instead.
        self._previous_sigterm = None
        if threading.current_thread() is threading.main_thread() \
                and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            self._previous_sigterm = signal.signal(signal.SIGTERM, _raise_terminated)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self.close()
            else:  # an error or Ctrl-C: nobody wants the remaining work
                self.terminate()
        finally:
            if self._previous_sigterm is not None:
                signal.signal(signal.SIGTERM, self._previous_sigterm)
