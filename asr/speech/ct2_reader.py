"""Reader for CTranslate2's ``model.bin`` (binary versions 1-6) without the ``ctranslate2`` package.

Layout, all integers little-endian; a string is ``uint16 length`` (including a closing NUL) then bytes:

    uint32 binary_version
    string spec name, uint32 spec revision                      (version >= 2)
    uint32 num_variables, then per variable:
        string name, uint8 rank, uint32 dims[rank],
        uint8 dtype id, uint32 num_bytes                         (version >= 4)
        uint8 item size, uint32 num_items                        (version < 4)
        num_bytes of row-major data
    uint32 num_aliases, then per alias: string alias, string name   (version >= 3)

Scalar attributes of the spec (``decoder/num_heads``, ``encoder/...``) are stored as rank-0 variables.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from asr.errors import ModelLoadError

# dtype ids in the order of CTranslate2's DataType enum (include/ctranslate2/types.h).
DTYPES_BY_ID = (torch.float32, torch.int8, torch.int16, torch.int32, torch.float16, torch.bfloat16)
# Binary versions before 4 stored an item size instead of a dtype id.
DTYPES_BY_ITEM_SIZE = {4: torch.float32, 2: torch.int16, 1: torch.int8}
MAX_BINARY_VERSION = 6


@dataclass(frozen=True)
class Ct2Model:
    """variables: name -> tensor as stored (aliases resolved to the same tensor object);
    aliases: alias -> name of the variable it shares."""

    binary_version: int
    spec: str
    revision: int
    variables: dict[str, torch.Tensor]
    aliases: dict[str, str]

    def scalar(self, name: str) -> int | float:
        """Value of a rank-0 variable (a spec attribute such as ``encoder/num_heads``)."""
        return self.variables[name].item()


class _Cursor:
    """Sequential little-endian reads over a byte buffer, failing with the offset when it runs short."""

    def __init__(self, data: memoryview, source: str) -> None:
        self.data, self.offset, self.source = data, 0, source

    def take(self, size: int) -> memoryview:
        if self.offset + size > len(self.data):
            raise ModelLoadError(
                f"{self.source} is truncated: needed {size} bytes at offset {self.offset} of "
                f"{len(self.data)}; the file is incomplete (re-install or re-convert the model)"
            )
        chunk = self.data[self.offset : self.offset + size]
        self.offset += size
        return chunk

    def unpack(self, fmt: str) -> int:
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        start = self.offset
        raw = bytes(self.take(self.unpack("H")))
        try:
            return raw.rstrip(b"\0").decode("utf-8")
        except UnicodeDecodeError as error:
            message = f"{self.source}: the name at offset {start} is not text; the file is corrupt"
            raise ModelLoadError(message) from error


def _read_variable(cursor: _Cursor, binary_version: int) -> tuple[str, torch.Tensor]:
    name = cursor.string()
    shape = tuple(cursor.unpack("I") for _ in range(cursor.unpack("B")))
    if binary_version >= 4:
        type_id, num_bytes = cursor.unpack("B"), cursor.unpack("I")
        if type_id >= len(DTYPES_BY_ID):
            raise ModelLoadError(f"{cursor.source}: variable {name!r} has unknown dtype id {type_id}")
        dtype = DTYPES_BY_ID[type_id]
    else:
        item_size, num_items = cursor.unpack("B"), cursor.unpack("I")
        if item_size not in DTYPES_BY_ITEM_SIZE:
            raise ModelLoadError(f"{cursor.source}: variable {name!r} has unknown item size {item_size}")
        dtype, num_bytes = DTYPES_BY_ITEM_SIZE[item_size], num_items * item_size
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if num_bytes != expected:
        raise ModelLoadError(
            f"{cursor.source}: variable {name!r} of shape {list(shape)} and dtype {dtype} holds "
            f"{num_bytes} bytes, expected {expected}; the file is corrupt"
        )
    # Copy out of the file buffer: the tensor must own writable memory once the buffer is dropped.
    raw = bytearray(cursor.take(num_bytes))
    return name, torch.frombuffer(raw, dtype=dtype).reshape(shape) if num_bytes else torch.empty(
        shape, dtype=dtype
    )


def parse_ct2(data: bytes | bytearray | memoryview, source: str = "model.bin") -> Ct2Model:
    """Parse the bytes of a CTranslate2 ``model.bin``; ``source`` names it in error messages."""
    cursor = _Cursor(memoryview(data), source)
    binary_version = cursor.unpack("I")
    if not 1 <= binary_version <= MAX_BINARY_VERSION:
        raise ModelLoadError(
            f"{source} is not a CTranslate2 model.bin (binary version {binary_version}, "
            f"expected 1-{MAX_BINARY_VERSION})"
        )
    spec, revision = (cursor.string(), cursor.unpack("I")) if binary_version >= 2 else ("", 1)
    variables = dict(_read_variable(cursor, binary_version) for _ in range(cursor.unpack("I")))
    aliases = {}
    if binary_version >= 3:
        for _ in range(cursor.unpack("I")):
            alias, name = cursor.string(), cursor.string()
            if name not in variables:
                raise ModelLoadError(f"{source}: alias {alias!r} points to missing variable {name!r}")
            aliases[alias] = name
            variables[alias] = variables[name]
    if cursor.offset != len(cursor.data):
        raise ModelLoadError(
            f"{source} has {len(cursor.data) - cursor.offset} unexpected bytes after its last record; "
            "the file is corrupt or was joined from the wrong parts"
        )
    return Ct2Model(binary_version, spec, revision, variables, aliases)


def read_ct2(path: str | Path) -> Ct2Model:
    """Read a CTranslate2 ``model.bin`` file (or a directory holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.bin"
    if not path.is_file():
        raise ModelLoadError(
            f"{path} does not exist; point to a CTranslate2 model directory or its model.bin"
        )
    return parse_ct2(path.read_bytes(), str(path))
