"""WebSocket frames as a server writes them when no extension is negotiated.

A server's frames are not masked (RFC 6455 section 5.1), so the bytes of a message's
frame are the same for every connection without an extension: the channel layer builds
them once per broadcast and the nexios server writes them as they are. websockets frames
everything else (control frames, and every frame of a compressed connection).
"""

from __future__ import annotations

import struct

__all__ = ["BINARY", "TEXT", "frame_header"]

TEXT = 0x1
BINARY = 0x2

_FIN = 0x80
_LENGTH_16 = struct.Struct("!BBH")
_LENGTH_64 = struct.Struct("!BBQ")


def frame_header(opcode: int, length: int) -> bytes:
    """The header of a final, unmasked frame with *length* payload bytes (RFC 6455
    section 5.2: the 7-bit length, or 126 and a 16-bit one, or 127 and a 64-bit one)."""
    if length < 126:
        return bytes((_FIN | opcode, length))
    if length < 0x10000:
        return _LENGTH_16.pack(_FIN | opcode, 126, length)
    return _LENGTH_64.pack(_FIN | opcode, 127, length)
