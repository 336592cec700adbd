"""Decode workers: separate processes that a time limit really stops.

A thread cannot be stopped, so a file built to be expensive to decode (a progressive JPEG with
thousands of scans, a huge float TIFF) would hold a decode thread for as long as it takes,
whatever the request's own timeout says. Here each decode runs in a worker process; when it
takes longer than ``timeout_s``, or the request that waits for it is cancelled (its own timeout,
the client gone), the worker is killed and a fresh one takes its place, so the decoder is free
again at once. A worker that dies (e.g. killed for memory) is replaced the same way.

Workers are forked from a fork server that has already imported the decoding modules, so
starting or replacing one takes milliseconds. Jobs are module-level functions and their
arguments, pickled over a pipe; errors come back as :class:`~model.imageio.ImageError` subclasses
(rebuilt on this side) or as :class:`DecodeStoppedError`. An argument given as
:class:`FileContent` reaches the function as the bytes of that file, read by the worker: the
file's descriptor goes over the pipe (``SCM_RIGHTS``), its bytes never pass through this
process's memory or the pipe.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing import reduction
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, TypeVar

from model import imageio

logger = logging.getLogger(__name__)

R = TypeVar("R")

PRELOAD = ["model.preprocess", "service.decode", "service.imagestore"]
"""Imported once by the fork server, so forked workers start warm."""


class DecodeStoppedError(RuntimeError):
    """A decode was stopped: it ran past the time limit (``timed_out``) or its worker died."""

    def __init__(self, message: str, *, timed_out: bool) -> None:
        super().__init__(message)
        self.timed_out = timed_out


@dataclass(frozen=True)
class FileContent:
    """A job argument the worker receives as the first ``size`` bytes of the open file
    ``fd`` of this process (see the module docstring). The caller keeps ``fd`` open until the
    job ends; the worker reads with ``pread``, so the file's offset does not move."""

    fd: int
    size: int


def _read_passed_file(conn: Connection, size: int) -> bytes:
    """In the worker: take the descriptor that follows the job on ``conn`` and read it."""
    fd = reduction.recv_handle(conn)
    try:
        chunks: list[bytes] = []
        offset = 0
        while offset < size:
            chunk = os.pread(fd, size - offset, offset)
            if not chunk:
                break  # the file is shorter than announced: the decoder sees what is there
            chunks.append(chunk)
            offset += len(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)
    finally:
        os.close(fd)


def _worker_main(conn: Connection, memory_limit: int | None) -> None:
    """A worker's loop: run each job sent over ``conn`` and send back its outcome."""
    if memory_limit is not None:
        import resource

        try:
            resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
        except (ValueError, OSError) as exc:  # e.g. a hard limit already lower
            logger.warning("cannot limit a decode worker's memory: %s", exc)
    _warm_up()
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        function, args = job
        try:
            args = tuple(
                _read_passed_file(conn, a.size) if isinstance(a, FileContent) else a for a in args
            )
        except (OSError, EOFError, RuntimeError) as exc:  # the pipe may be out of step now
            with contextlib.suppress(OSError, ValueError):
                conn.send(("error", f"could not read the file passed to the decoder: {exc}"))
            return
        try:
            outcome: tuple[str, Any] = ("ok", function(*args))
        except imageio.ImageTooLargeError as exc:
            outcome = ("too_large", (str(exc), exc.size, exc.limit))
        except imageio.ImageError as exc:  # these take their message only: they pickle
            outcome = ("raise", exc)
        except MemoryError:
            outcome = (
                "too_large",
                ("There is not enough memory to decode this image: send a smaller one.", None, 0),
            )
        except Exception as exc:  # reported to the caller; the worker lives on
            outcome = ("error", f"{type(exc).__name__}: {exc}")
        try:
            conn.send(outcome)
        except (OSError, ValueError):
            return


def _warm_up() -> None:
    """Load what the first decode would otherwise load lazily (Pillow's format plugins, the
    strict JPEG decoder), so that no request's time limit pays for it."""
    from PIL import Image

    Image.init()
    with contextlib.suppress(ImportError):  # a dependency of the service
        import simplejpeg  # noqa: F401


def _rebuild(kind: str, payload: Any) -> Any:
    if kind == "ok":
        return payload
    if kind == "too_large":
        message, size, limit = payload
        raise imageio.ImageTooLargeError(message, size=size, limit=limit)
    if kind == "raise" and isinstance(payload, imageio.ImageError):
        raise payload
    raise RuntimeError(f"decode worker failed: {payload}")


class _Worker:
    """One worker process and the parent's end of its pipe."""

    def __init__(
        self, context: multiprocessing.context.BaseContext, memory_limit: int | None
    ) -> None:
        parent, child = context.Pipe(duplex=True)
        self.conn: Connection = parent
        self.process: BaseProcess = context.Process(  # type: ignore[attr-defined]
            target=_worker_main,
            args=(child, memory_limit),
            name="cites-decode",
            daemon=True,
        )
        self.process.start()
        child.close()
        self.killed = False

    def call(self, function: Callable[..., Any], args: tuple[Any, ...], timeout_s: float) -> Any:
        """Run one job (blocking; in an I/O thread)."""
        try:
            self.conn.send((function, args))
            for argument in args:
                if isinstance(argument, FileContent):
                    reduction.send_handle(self.conn, argument.fd, self.process.pid)
            if not self.conn.poll(timeout_s):
                self.kill()
                self.conn.close()
                raise DecodeStoppedError(
                    f"decoding took longer than {timeout_s:g} s and was stopped", timed_out=True
                )
            kind, payload = self.conn.recv()
        except (EOFError, OSError) as exc:
            cancelled = self.killed
            self.kill()
            self.conn.close()
            if cancelled:
                raise DecodeStoppedError("the decode was cancelled", timed_out=True) from None
            raise DecodeStoppedError(
                f"the decode worker died ({exc or 'exit code ' + str(self.process.exitcode)}); "
                "the image may need more memory than allowed",
                timed_out=False,
            ) from None
        return _rebuild(kind, payload)

    def kill(self) -> None:
        """Stop the process now (idempotent; the pipe is closed by whoever uses it)."""
        if not self.killed:
            self.killed = True
            if self.process.is_alive():
                self.process.kill()
        self.process.join(timeout=5)

    def dispose(self) -> None:
        """Stop the process and close the pipe (only when no thread is using it)."""
        self.kill()
        self.conn.close()

    @property
    def usable(self) -> bool:
        """Alive and not stopped."""
        return not self.killed and self.process.is_alive()


def _consume(future: asyncio.Future[Any]) -> None:
    """Retrieve the outcome of a job nobody awaits any more (its caller was cancelled)."""
    if not future.cancelled():
        future.exception()


class DecodeWorkers:
    """A pool of ``workers`` decode processes with a per-job time limit."""

    def __init__(
        self, workers: int, *, timeout_s: float, memory_limit_bytes: int | None = None
    ) -> None:
        """``memory_limit_bytes`` caps each worker's address space (a decode that needs more
        fails with :class:`~model.imageio.ImageTooLargeError` instead of swapping the host)."""
        if workers < 1 or timeout_s <= 0:
            raise ValueError("workers must be >= 1 and timeout_s > 0")
        self.size = workers
        self.timeout_s = timeout_s
        self.memory_limit_bytes = memory_limit_bytes
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(PRELOAD)
        self._idle: collections.deque[_Worker] = collections.deque()
        self._lock = threading.Lock()
        self._free: asyncio.Semaphore | None = None
        self._io = ThreadPoolExecutor(workers, thread_name_prefix="decode-io")
        self._closed = False
        self.replaced = 0

    def start(self) -> None:
        """Start the processes (blocking: a few hundred ms the first time, for the fork server)."""
        started = time.perf_counter()
        with self._lock:
            while len(self._idle) < self.size:
                self._idle.append(_Worker(self._context, self.memory_limit_bytes))
        logger.info(
            "%d decode workers started in %.0f ms", self.size, (time.perf_counter() - started) * 1e3
        )

    async def run(self, function: Callable[..., R], *args: Any) -> R:
        """Run ``function(*args)`` in a worker (``function`` must be module-level). Raises what
        it raises (ImageError subclasses), or :class:`DecodeStoppedError`."""
        if self._closed:
            raise RuntimeError("the decode workers are closed")
        if self._free is None:
            self._free = asyncio.Semaphore(self.size)
        loop = asyncio.get_running_loop()
        async with self._free:
            worker = await loop.run_in_executor(self._io, self._take)
            job = loop.run_in_executor(self._io, worker.call, function, args, self.timeout_s)
            job.add_done_callback(_consume)
            try:
                result: R = await asyncio.shield(job)
                return result
            except asyncio.CancelledError:
                worker.kill()  # the caller gave up: free the decoder now
                raise
            finally:
                self._give_back(worker)

    def _take(self) -> _Worker:
        with self._lock:
            worker = self._idle.popleft() if self._idle else None
        if worker is None or not worker.usable:
            if worker is not None:
                worker.dispose()
            worker = _Worker(self._context, self.memory_limit_bytes)
        return worker

    def _give_back(self, worker: _Worker) -> None:
        if not worker.usable:  # its thread closes the pipe once the call returns
            self.replaced += 1
            worker.kill()
            if self._closed:
                return
            self._io.submit(self._replace)
            return
        with self._lock:
            if not self._closed:
                self._idle.append(worker)
                return
        worker.dispose()

    def _replace(self) -> None:
        try:
            fresh = _Worker(self._context, self.memory_limit_bytes)
        except OSError:
            logger.exception("could not start a decode worker; one will be started on demand")
            return
        with self._lock:
            if not self._closed and len(self._idle) < self.size:
                self._idle.append(fresh)
                return
        fresh.dispose()

    def close(self) -> None:
        """Stop every worker."""
        with self._lock:
            self._closed = True
            idle = list(self._idle)
            self._idle.clear()
        for worker in idle:
            worker.dispose()
        self._io.shutdown(wait=False, cancel_futures=True)
