"""Uploaded images, kept where the multipart parser spooled them until a decoder reads them.

Starlette's form parser writes each uploaded file to a spooled temporary file (memory up to
1 MiB, then disk). The identification path keeps that file and reads its bytes only once the
image holds a decode slot (:mod:`service.admission`), so images waiting for a decoder cost disk,
not memory: memory grows with the number of decoders, not with the number of uploads in flight.
"""

from __future__ import annotations

import os
from typing import IO

from starlette.datastructures import UploadFile


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
