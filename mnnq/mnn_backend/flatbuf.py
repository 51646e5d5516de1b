"""A minimal reader of flatbuffer tables (the format of ``.mnn`` files), over a bytes object.

Positions are byte offsets into the data; a table's fields are addressed by their slot (their
order in the schema, a union taking two slots: its type and its value). Only what mnnq reads
is here: scalars, strings, vectors of scalars, vectors of tables or strings.
"""
from __future__ import annotations

import struct
from pathlib import Path
from typing import List, Optional

import numpy as np

from mnnq.errors import BadInput


class FlatBuffer:
    """Minimal flatbuffer table reader over a bytes object."""

    def __init__(self, data: bytes):
        self.data = data
        self.mv = memoryview(data)

    @classmethod
    def read(cls, path: Path) -> "FlatBuffer":
        """The file at ``path``; an unreadable file is :class:`BadInput` naming it."""
        try:
            return cls(Path(path).read_bytes())
        except OSError as exc:
            raise BadInput(f"cannot read model {path}: {exc}") from None

    def u32(self, pos: int) -> int:
        return struct.unpack_from("<I", self.data, pos)[0]

    def root(self) -> int:
        return self.u32(0)

    def field_pos(self, table: int, slot: int) -> int:
        vtable = table - struct.unpack_from("<i", self.data, table)[0]
        vt_size = struct.unpack_from("<H", self.data, vtable)[0]
        entry = 4 + 2 * slot
        if entry >= vt_size:
            return 0
        off = struct.unpack_from("<H", self.data, vtable + entry)[0]
        return table + off if off else 0

    def scalar(self, table: int, slot: int, fmt: str, default):
        pos = self.field_pos(table, slot)
        return struct.unpack_from(fmt, self.data, pos)[0] if pos else default

    def indirect(self, table: int, slot: int) -> int:
        pos = self.field_pos(table, slot)
        return pos + self.u32(pos) if pos else 0

    def vector_offset(self, table: int, slot: int) -> int:
        vec = self.indirect(table, slot)
        return vec + 4 if vec else -1

    def vector(self, table: int, slot: int, dtype) -> Optional[np.ndarray]:
        vec = self.indirect(table, slot)
        if not vec:
            return None
        n = self.u32(vec)
        return np.frombuffer(self.data, dtype=dtype, count=n, offset=vec + 4)

    def _text(self, pos: int) -> str:
        """The string whose length prefix is at ``pos``."""
        n = self.u32(pos)
        return bytes(self.mv[pos + 4: pos + 4 + n]).decode("utf-8", "replace")

    def string(self, table: int, slot: int) -> Optional[str]:
        vec = self.indirect(table, slot)
        return self._text(vec) if vec else None

    def tables(self, table: int, slot: int) -> List[int]:
        """Positions of the tables (or strings) a vector of offsets points to."""
        vec = self.indirect(table, slot)
        if not vec:
            return []
        n = self.u32(vec)
        return [p + self.u32(p) for p in range(vec + 4, vec + 4 + 4 * n, 4)]

    def strings(self, table: int, slot: int) -> List[str]:
        return [self._text(s) for s in self.tables(table, slot)]

    def length(self, table: int, slot: int) -> int:
        """Element count of a vector field (0 when absent)."""
        vec = self.indirect(table, slot)
        return self.u32(vec) if vec else 0
