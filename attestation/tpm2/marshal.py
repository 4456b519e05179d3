"""Bounds-checked reading of TPM wire structures (big-endian, TPM2B = u16 size + bytes).

Every read names the structure and offset on failure, so malformed evidence is reported, never crashes.
"""

from __future__ import annotations

import struct

from attestation.errors import MalformedStructureError


class Reader:
    def __init__(self, data: bytes, structure: str) -> None:
        self._data = bytes(data)
        self._offset = 0
        self.structure = structure

    @property
    def offset(self) -> int:
        return self._offset

    def _take(self, n: int) -> bytes:
        if n < 0 or self._offset + n > len(self._data):
            raise MalformedStructureError(
                f"{self.structure}: truncated at offset {self._offset} (wanted {n} bytes, "
                f"{len(self._data) - self._offset} left)"
            )
        chunk = self._data[self._offset : self._offset + n]
        self._offset += n
        return chunk

    def u8(self) -> int:
        return self._take(1)[0]

    def u16(self) -> int:
        return int(struct.unpack(">H", self._take(2))[0])

    def u32(self) -> int:
        return int(struct.unpack(">I", self._take(4))[0])

    def u64(self) -> int:
        return int(struct.unpack(">Q", self._take(8))[0])

    def raw(self, n: int) -> bytes:
        return self._take(n)

    def tpm2b(self, *, max_size: int = 4096) -> bytes:
        size = self.u16()
        if size > max_size:
            raise MalformedStructureError(
                f"{self.structure}: field of {size} bytes at offset {self._offset} (max {max_size})"
            )
        return self._take(size)

    def expect_end(self) -> None:
        if self._offset != len(self._data):
            raise MalformedStructureError(
                f"{self.structure}: {len(self._data) - self._offset} trailing bytes after offset {self._offset}"
            )


def u16(value: int) -> bytes:
    return struct.pack(">H", value)


def tpm2b(data: bytes) -> bytes:
    return struct.pack(">H", len(data)) + data
