"""Uploaded images, kept where the multipart parser spooled them; the server never reads a
large one into its memory.

Starlette's form parser writes each uploaded file to a spooled temporary file (memory up to
1 MiB, then disk). The identification path keeps that file:

- a decode worker reads it itself: the server passes the file's descriptor, not its bytes
  (:meth:`Upload.file_descriptor`, :class:`service.decodeworkers.FileContent`), once the image
  holds a decode slot (:mod:`service.admission`);
- when the image is stored exactly as uploaded, the storage stage copies the file to the image
  store in chunks (:meth:`Upload.copy_to`).

So images waiting for a decoder cost disk, not memory, and a 14 MB photo is never a 14 MB
buffer in the server (docs/benchmarks.md, "Large uploads"). Small uploads, still in memory, go
as bytes.
"""

from __future__ import annotations

import os
import shutil
from typing import IO, BinaryIO

from starlette.datastructures import UploadFile

PASS_AS_FILE_BYTES = 1 << 20
"""Uploads of at least this size (Starlette's in-memory spool limit) are passed to a decode
worker as their file, smaller ones as bytes."""

COPY_CHUNK_BYTES = 1 << 20


class Upload:
    """One uploaded image: its size and how to read it (see the module docstring)."""

    def __init__(self, *, size: int, file: IO[bytes] | None = None, data: bytes | None = None):
        if (file is None) == (data is None):
            raise ValueError("an upload is either a file or bytes")
        self.size = size
        self._file = file
        self._data = data

    @classmethod
    def from_bytes(cls, data: bytes) -> Upload:
        """An upload already in memory (tests, the command line)."""
        return cls(size=len(data), data=data)

    @classmethod
    def from_form(cls, upload: UploadFile) -> Upload:
        """The file the form parser spooled (its size is known once the form is parsed)."""
        size = upload.size
        if size is None:
            handle = upload.file
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
        return cls(size=size, file=upload.file)

    def read(self) -> bytes:
        """The bytes (blocking when spooled to disk: call it in a worker thread)."""
        if self._data is not None:
            return self._data
        if self._file is None:  # pragma: no cover - __init__ allows one or the other
            raise RuntimeError("an upload without bytes")
        self._file.seek(0)
        return self._file.read()

    def file_descriptor(self) -> int | None:
        """The descriptor of the spool file on disk, for an upload of at least
        :data:`PASS_AS_FILE_BYTES` (None for a smaller one or one in memory: pass its bytes).
        Whoever uses it must read with ``os.pread``: the file's offset is shared."""
        if self._file is None or self.size < PASS_AS_FILE_BYTES:
            return None
        try:
            return self._file.fileno()  # a spooled file moves to disk if it had not yet
        except (OSError, ValueError, AttributeError):  # io.BytesIO and the like: no file
            return None

    def copy_to(self, handle: BinaryIO) -> None:
        """Write every byte to ``handle``, in chunks (blocking: a worker thread)."""
        if self._data is not None:
            handle.write(self._data)
            return
        if self._file is None:  # pragma: no cover - __init__ allows one or the other
            raise RuntimeError("an upload without bytes")
        self._file.seek(0)
        shutil.copyfileobj(self._file, handle, COPY_CHUNK_BYTES)
