"""`DATA/users.changed`: how a tool (`hero user …`) tells a node on the same data dir what it changed.

Each change is one appended line (one write: lines of concurrent writers never mix); a reader keeps its offset
and reads only what was appended since, at the cost of one stat when nothing was. A deleted user's lines are
blanked in place, at the same length, so their name leaves the disk and readers' offsets stay true.
"""

from __future__ import annotations

import os
from pathlib import Path

CHANGES = "users.changed"


class ChangeLog:
    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / CHANGES
        self._at = 0  # the offset read up to (complete lines only)
        self._size = -1  # the file's size when last read

    def skip(self) -> None:
        """What the file holds now is known already (the registry was just read from the store)."""
        try:
            self._at = self._size = self.path.stat().st_size
        except OSError:
            self._at, self._size = 0, -1

    def new_lines(self) -> list[bytes]:
        """The complete lines appended since the last call (blanked ones included)."""
        try:
            size = self.path.stat().st_size
        except OSError:
            return []
        if size == self._size:
            return []
        self._size = size
        with open(self.path, "rb") as f:
            f.seek(self._at)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self._at += end
        return data[:end].splitlines()

    def append(self, line: bytes) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line + b"\n")
        finally:
            os.close(fd)

    def blank(self, needle: bytes) -> None:
        """Overwrite with spaces every complete line that holds `needle`."""
        try:
            fd = os.open(self.path, os.O_RDWR)
        except FileNotFoundError:
            return
        try:
            data = os.pread(fd, os.fstat(fd).st_size, 0)
            offset = 0
            for line in data.splitlines(keepends=True):
                if needle in line and line.endswith(b"\n"):
                    os.pwrite(fd, b" " * (len(line) - 1), offset)
                offset += len(line)
        finally:
            os.close(fd)
