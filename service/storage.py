"""The storage stage: durable image writes in groups, with a reference count per sha256.

Every identification stores its image before its database row may refer to it. Writing one
file durably costs a ``fsync`` of the file and one of its directory; doing that per request,
each in its own thread, made the image store the largest product function in the service's
profile. Here one writer thread takes every image that is ready at the same time (a
:class:`~service.batcher.MicroBatcher` that never waits for company, as the recorder's group
commit of rows does) and makes the whole group durable together:

1. write every new file of the group to a temporary name beside its target;
2. ``fsync`` each of them (on a journalling file system the first one commits the journal for
   all, the rest find nothing left to do);
3. rename them into place;
4. ``fsync`` each distinct directory once.

The store is content-addressed, so two requests with the same content share one file. The
stage counts, per sha256, the requests of this process that started a write and have not yet
committed their row or given up. A request that fails after its write started calls
:meth:`ImageWriter.discard`: the file is deleted only when no other request of this process
still needs it and no database row refers to it (``is_recorded``). A process killed between the
write and the commit can leave an unreferenced file behind, never a row without its file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from service.batcher import MicroBatcher
from service.imagestore import ImageStore, PreparedImage

logger = logging.getLogger(__name__)

DEFAULT_MAX_GROUP = 64


class ImageWriter:
    """Stores images durably in groups; see the module docstring."""

    def __init__(
        self,
        store: ImageStore,
        *,
        is_recorded: Callable[[str], bool],
        queue_max: int,
        max_group: int = DEFAULT_MAX_GROUP,
    ) -> None:
        """``is_recorded(sha256)`` says whether a database row refers to an image (it may
        raise; the file is then kept)."""
        self.store = store
        self._is_recorded = is_recorded
        self._writer: MicroBatcher[PreparedImage, str | OSError] = MicroBatcher(
            self._write_group, max_size=max_group, max_wait_s=0.0, queue_max=queue_max
        )
        self._writers: dict[str, int] = {}
        self._lock = threading.Lock()  # guards _writers together with the discard decision
        self._known_dirs: set[Path] = set()
        self.groups_written = 0

    def start(self) -> None:
        """Start the writer task on the running loop."""
        self._writer.start()

    async def close(self) -> None:
        """Stop the writer (the service drains requests before this)."""
        await self._writer.close()

    def begin(self, image: PreparedImage) -> asyncio.Future[str]:
        """Start storing ``image`` durably; the future gives its relative path or raises the
        ``OSError`` that stopped it. The caller must later call :meth:`release` (its row is
        committed) or :meth:`discard` (it failed), exactly once."""
        with self._lock:
            self._writers[image.sha256] = self._writers.get(image.sha256, 0) + 1
        return asyncio.ensure_future(self._store(image))

    async def _store(self, image: PreparedImage) -> str:
        outcome = await self._writer.submit(image)
        if isinstance(outcome, OSError):
            raise outcome
        return outcome

    def release(self, sha256: str) -> None:
        """The request's row is committed: it no longer needs the count."""
        with self._lock:
            self._forget(sha256)

    async def discard(self, image: PreparedImage, write: asyncio.Future[str]) -> None:
        """After a failed request: wait for its write to end, then delete the file unless a
        database row or another in-flight request of this process uses the same content."""
        # An error means nothing complete was written; cancelled means the loop is stopping.
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.shield(write)
        await asyncio.to_thread(self._discard_file, image)

    def _forget(self, sha256: str) -> bool:
        """Forget one writer of ``sha256``; True when no other request of this process needs
        it. Call with ``_lock`` held."""
        left = self._writers.get(sha256, 0) - 1
        if left > 0:
            self._writers[sha256] = left
            return False
        self._writers.pop(sha256, None)
        return True

    def _discard_file(self, image: PreparedImage) -> None:
        with self._lock:
            if not self._forget(image.sha256):
                return
            try:
                if self._is_recorded(image.sha256):
                    return
            except Exception:  # cannot tell whether a row needs it: keep the file
                logger.exception("could not check the database for image %s", image.sha256)
                return
            path = self.store.path_of(self.store.relative_path(image.sha256, image.ext))
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                logger.warning("could not remove the image of a failed request %s: %s", path, exc)

    # ---- the group write (runs in a worker thread) --------------------------------------------

    def _write_group(self, group: Sequence[PreparedImage]) -> list[str | OSError]:
        """Make every image of ``group`` durable together; one outcome per image."""
        outcomes: list[str | OSError] = [""] * len(group)
        staged: dict[str, tuple[Path, Path]] = {}  # relative path -> (temporary, target)
        for index, image in enumerate(group):
            relative = self.store.relative_path(image.sha256, image.ext)
            outcomes[index] = relative
            if relative in staged:
                continue
            target = self.store.root / relative
            try:
                if target.exists() and target.stat().st_size == image.size:
                    continue
                staged[relative] = (self._write_temporary(target, image), target)
            except OSError as exc:
                outcomes[index] = exc
        failed = self._commit(staged)
        for index, outcome in enumerate(outcomes):
            if isinstance(outcome, str) and outcome in failed:
                outcomes[index] = failed[outcome]
        self.groups_written += 1
        return outcomes

    def _write_temporary(self, target: Path, image: PreparedImage) -> Path:
        folder = target.parent
        if folder not in self._known_dirs:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)  # private, like the files
            self._known_dirs.add(folder)
        temporary = folder / f".tmp-{os.getpid()}-{threading.get_ident()}-{target.name}"
        try:
            with open(temporary, "wb", opener=_private_file) as handle:
                try:
                    image.write_to(handle)
                except ValueError as exc:  # the upload's spool file was closed under us
                    raise OSError(f"the uploaded file could not be read: {exc}") from exc
        except OSError:
            temporary.unlink(missing_ok=True)
            if not folder.is_dir():  # removed behind our back: forget it was there
                self._known_dirs.discard(folder)
            raise
        return temporary

    def _commit(self, staged: dict[str, tuple[Path, Path]]) -> dict[str, OSError]:
        """fsync every file, rename them into place, fsync each directory once; returns the
        relative paths that failed with their error (their temporary file is removed)."""
        failed: dict[str, OSError] = {}
        for relative, (temporary, _) in staged.items():
            try:
                _fsync_path(temporary, os.O_RDONLY)
            except OSError as exc:
                failed[relative] = exc
        folders: set[Path] = set()
        for relative, (temporary, target) in staged.items():
            if relative in failed:
                temporary.unlink(missing_ok=True)
                continue
            try:
                os.replace(temporary, target)
                folders.add(target.parent)
            except OSError as exc:
                failed[relative] = exc
                temporary.unlink(missing_ok=True)
        for folder in folders:
            with contextlib.suppress(OSError):  # some file systems cannot fsync a directory
                _fsync_path(folder, os.O_RDONLY | os.O_DIRECTORY)
        return failed


def _fsync_path(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _private_file(path: str, flags: int) -> int:
    """Open for ``open(opener=...)``: a new image file is readable by the service only (0600)."""
    return os.open(path, flags, 0o600)
