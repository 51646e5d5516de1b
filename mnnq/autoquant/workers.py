"""Simulated trials in several processes at once (``--jobs``).

A batch of independent trials (the sensitivity screening's probes, say) is shared between this
process and worker processes, each with its own in-process model (the same float re-write,
layers, test set and weight method, so every process computes the same error for the same
settings). Scheduling is dynamic: a worker gets the next trial whenever it is free, and this
process takes one itself between looking at the workers' answers; a batch finishes as fast as
the processes allow, whatever each trial costs.

Workers are forked by mnnq's child server (:mod:`mnnq.mnn_backend.native`), which imported MNN
before anything ran: milliseconds to start instead of a new interpreter's imports. Each one
connects back to a local (``AF_UNIX``) socket in the run's temporary folder. A worker that
fails to start, to load its model or that dies mid-trial is dropped (its trial is measured
here) and the run goes on with the others; the report says so. Only installed plugins exist in
a worker (it loads them by entry point): with a method or metric registered only in this
process, workers are not used.

Test hook: with ``MNNQ_WAIT_FOR_WORKERS=1`` in the environment, a batch waits until every worker
has connected (or given up) before it starts, so that tests on tiny models, whose batches end
before a worker is ready, see the workers take trials.
"""
from __future__ import annotations

import os
import pickle
import select
import shutil
import socket
import struct
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from mnnq.layers import Layer, LayerSetting
from mnnq.measure import Measurement
from mnnq.testset import TestSet

WORKER_MODULE = "mnnq.autoquant.worker_main"
WAIT_ENV = "MNNQ_WAIT_FOR_WORKERS"
CONNECT_TIMEOUT = 60.0  # seconds a worker may take to start and load its model
_HEADER = struct.Struct("!I")


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def auto_jobs() -> int:
    """``--jobs auto``: one process per usable CPU, at most 4."""
    return max(1, min(usable_cpus(), 4))


def send_message(sock: socket.socket, obj) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    sock.sendall(_HEADER.pack(len(data)) + data)


def receive_message(sock: socket.socket):
    """The next message on ``sock``; EOFError when the other side is gone."""
    header = _receive_exactly(sock, _HEADER.size)
    return pickle.loads(_receive_exactly(sock, _HEADER.unpack(header)[0]))


def _receive_exactly(sock: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            raise EOFError("connection closed")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


@dataclass
class WorkerSetup:
    """What a worker needs to build the same simulation as this process."""

    model: Path                    # the converter's float re-write the simulation loads
    layers: List[Layer]
    testset: TestSet
    method: str                    # weight method name
    metrics: List[str]             # metric names
    decides: str                   # the metric the budget is on
    workdir: Path                  # the folder each worker makes its own subfolder in (for its swap files)
    mode: str = "patch"            # the SwappableModel backend this process chose


@dataclass
class _Worker:
    child: object                  # native.Child
    sock: Optional[socket.socket] = None
    busy: Optional[int] = None     # index of the trial it is measuring
    sent: float = 0.0


@dataclass
class TrialWorkers:
    """Worker processes for independent simulated trials; ``many`` has the contract of
    :class:`mnnq.autoquant.context.Evaluation.many` and also measures in this process with
    ``measure_here``. ``notes`` says when workers were dropped."""

    measure_here: Callable[[Dict[str, LayerSetting], str, bool], Measurement]
    quick_indices: Callable[[], Tuple[int, ...]] = tuple   # this process's quick samples (workers use the same)
    workers: List[_Worker] = field(default_factory=list)
    listener: Optional[socket.socket] = None
    notes: List[str] = field(default_factory=list)
    short_dir: Optional[str] = None
    started: int = 0               # workers started
    answered: int = 0              # trials measured by workers
    mode: str = "patch"            # the backend the workers load

    @classmethod
    def start(cls, count: int, setup: WorkerSetup, work: Path,
              measure_here: Callable[[Dict[str, LayerSetting], str, bool], Measurement]) -> "TrialWorkers":
        """Start ``count`` workers (they connect when ready; trials start here meanwhile)."""
        from mnnq.mnn_backend.native import start_python

        pool = cls(measure_here)
        path = pool._socket_path(work)
        request = work / "workers-setup.pkl"   # one for all: each worker takes its own workdir below it
        try:
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(str(path))
            listener.listen(count)
            listener.setblocking(False)
        except OSError as exc:  # e.g. a socket path too long for this system
            pool.notes.append(f"--jobs: no worker processes ({exc}); every trial ran in this process")
            return pool
        pool.listener = listener
        with open(request, "wb") as fh:
            pickle.dump(setup, fh, protocol=pickle.HIGHEST_PROTOCOL)
        for i in range(count):
            child = start_python(["-m", WORKER_MODULE, str(request), str(path), f"worker-{i}"], "an auto-quant worker")
            pool.workers.append(_Worker(child, sent=time.monotonic()))
        pool.started = count
        pool.mode = setup.mode
        return pool

    def _socket_path(self, work: Path) -> Path:
        """A socket path in a folder only this user can enter: the run's own temporary folder,
        or a short private one when that path is too long for a socket (~107 bytes)."""
        path = work / "workers.sock"
        if len(os.fsencode(str(path))) <= 100:
            return path
        self.short_dir = tempfile.mkdtemp(prefix="mnnq-", dir="/tmp" if os.path.isdir("/tmp") else None)
        return Path(self.short_dir) / "w.sock"

    def many(self, batch: Sequence[Dict[str, LayerSetting]], memory_mode: str, quick: bool) -> List[Measurement]:
        """Measure every settings map of ``batch`` (in any process); results in batch order."""
        results: List[Optional[Measurement]] = [None] * len(batch)
        pending = list(range(len(batch)))
        if os.environ.get(WAIT_ENV) == "1":
            while any(w.sock is None for w in self.workers):
                self._accept()
                time.sleep(0.01)
        while pending or any(w.busy is not None for w in self.workers):
            self._accept()
            for worker in self.workers:
                if worker.sock is not None and worker.busy is None and pending:
                    index = pending.pop(0)
                    if not self._send(worker, index, batch[index], quick):
                        pending.insert(0, index)
            if pending:
                index = pending.pop(0)
                results[index] = self.measure_here(dict(batch[index]), memory_mode, quick)
            self._collect(results, pending, wait=not pending)
        return [r for r in results]  # type: ignore[misc]

    def _accept(self) -> None:
        if self.listener is None:
            return
        waiting = [w for w in self.workers if w.sock is None]
        while waiting:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                break
            sock.setblocking(True)
            try:
                pid = receive_message(sock)
            except (EOFError, OSError, pickle.PickleError):
                sock.close()
                continue
            worker = next((w for w in waiting if w.child.pid == pid), None)
            if worker is None:
                sock.close()
                continue
            worker.sock = sock
            waiting.remove(worker)
        for worker in [w for w in self.workers if w.sock is None]:
            if time.monotonic() - worker.sent > CONNECT_TIMEOUT:
                self._drop(worker, f"did not start within {CONNECT_TIMEOUT:g} s")

    def _send(self, worker: _Worker, index: int, settings, quick: bool) -> bool:
        # a quick trial runs on this process's quick samples (they grow here, never in a worker)
        try:
            send_message(worker.sock, ("measure", index, dict(settings), self.quick_indices() if quick else None))
        except OSError as exc:
            self._drop(worker, f"could not be reached ({exc})")
            return False
        worker.busy = index
        return True

    def _collect(self, results: List[Optional[Measurement]], pending: List[int], wait: bool) -> None:
        busy = {w.sock: w for w in self.workers if w.busy is not None and w.sock is not None}
        if not busy:
            return
        ready, _, _ = select.select(list(busy), [], [], 0.05 if wait else 0.0)
        for sock in ready:
            worker = busy[sock]
            index = worker.busy
            try:
                kind, got_index, payload = receive_message(sock)
            except (EOFError, OSError, pickle.PickleError, ValueError):
                self._drop(worker, "stopped mid-trial")
                pending.insert(0, index)
                continue
            worker.busy = None
            if kind != "ok" or got_index != index:
                self._drop(worker, f"failed: {payload}")
                pending.insert(0, index)
                continue
            results[index] = Measurement(payload)
            self.answered += 1

    def _drop(self, worker: _Worker, why: str) -> None:
        self.notes.append(f"--jobs: a worker process {why}; its trials ran in the other processes")
        worker.busy = None
        self._stop(worker)
        self.workers.remove(worker)

    @staticmethod
    def _stop(worker: _Worker) -> None:
        if worker.sock is not None:
            try:
                send_message(worker.sock, ("quit", None, None, None))
            except OSError:
                pass
            worker.sock.close()
            worker.sock = None
        worker.child.kill()
        try:
            worker.child.result()
        except Exception:  # noqa: BLE001 - it is gone either way
            pass

    def close(self) -> None:
        for worker in list(self.workers):
            self._stop(worker)
        self.workers = []
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        if self.short_dir is not None:
            shutil.rmtree(self.short_dir, ignore_errors=True)
            self.short_dir = None


class WorkerLauncher:
    """Starts the ``--jobs`` workers as early as the simulation's backend is known: ``early``
    right after the model is read (the file is small enough for the patch backend), else
    ``ready`` once the evaluators exist. ``skip`` (a note) when workers cannot be used."""

    def __init__(self, workers: int, method: str, metrics: List[str], decides: str, work: Path,
                 testset: TestSet, skip: Optional[str] = None):
        self.count, self.method, self.metrics, self.decides = workers, method, metrics, decides
        self.work, self.testset, self.skip = work, testset, skip
        self.pool: Optional[TrialWorkers] = None

    def _start(self, rewritten: Path, layers: List[Layer], mode: str,
               measure_here: Callable[[Dict[str, LayerSetting], str, bool], Measurement]) -> None:
        setup = WorkerSetup(rewritten, list(layers), self.testset, self.method, self.metrics, self.decides,
                            self.work, mode)
        self.pool = TrialWorkers.start(self.count, setup, self.work, measure_here)

    def early(self, rewritten: Path, layers: List[Layer], mode: str) -> None:
        if self.count > 0 and self.skip is None and self.pool is None:
            self._start(rewritten, layers, mode, lambda *a: None)  # type: ignore[arg-type]

    def ready(self, fast, rewritten: Path, layers: List[Layer]) -> TrialWorkers:
        """The pool for the search: ``fast`` (the simulation; None when unavailable) measures
        here; workers started early with another backend are replaced."""
        if fast is None or self.count == 0 or self.skip is not None:
            self.close()
            notes = [self.skip] if self.skip and fast is not None else []
            return TrialWorkers(lambda *a: None, notes=notes)  # type: ignore[arg-type]
        if self.pool is not None and self.pool.mode != fast.model.mode:
            self.close()
        if self.pool is None:
            self._start(rewritten, layers, fast.model.mode, fast.measure)
        self.pool.measure_here = fast.measure
        self.pool.quick_indices = lambda: tuple(fast.quick.indices)
        return self.pool

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None
