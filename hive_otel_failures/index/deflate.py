"""Raw deflate for the SQLite writer, through libz by ctypes so that it keeps the GIL.

Python's zlib (3.11) gives the GIL up around each deflate() call and to take each compressor's
lock: five times per snapshot. Beside a busy application thread, every time costs the writer up
to a switch interval (5 ms) to get it back, as SQLite calls do; deflating 1 KB takes ~15 µs, and
holding the GIL for it is what the writer wants. Where libz cannot be loaded, Python's zlib gives
the same bytes (a test checks they are identical). Only a writer imports this module.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import zlib
from typing import Any


class _ZStream(ctypes.Structure):
    _fields_ = [("next_in", ctypes.c_char_p), ("avail_in", ctypes.c_uint), ("total_in", ctypes.c_ulong),
                ("next_out", ctypes.c_void_p), ("avail_out", ctypes.c_uint), ("total_out", ctypes.c_ulong),
                ("msg", ctypes.c_char_p), ("state", ctypes.c_void_p), ("zalloc", ctypes.c_void_p),
                ("zfree", ctypes.c_void_p), ("opaque", ctypes.c_void_p), ("data_type", ctypes.c_int),
                ("adler", ctypes.c_ulong), ("reserved", ctypes.c_ulong)]


def _libz() -> Any:
    """zlib through ctypes.PyDLL, which keeps the GIL during a call; None where it cannot be loaded."""
    name = ctypes.util.find_library("z")
    try:
        lib = ctypes.PyDLL(name or "libz.so.1")
        lib.deflateInit2_.argtypes = [ctypes.POINTER(_ZStream), ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                      ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.deflateSetDictionary.argtypes = [ctypes.POINTER(_ZStream), ctypes.c_char_p, ctypes.c_uint]
        lib.deflateCopy.argtypes = [ctypes.POINTER(_ZStream), ctypes.POINTER(_ZStream)]
        lib.deflate.argtypes = [ctypes.POINTER(_ZStream), ctypes.c_int]
        lib.deflateEnd.argtypes = [ctypes.POINTER(_ZStream)]
        lib.deflateBound.argtypes = [ctypes.POINTER(_ZStream), ctypes.c_ulong]
        lib.deflateBound.restype = ctypes.c_ulong
        lib.zlibVersion.restype = ctypes.c_char_p
        return lib
    except (OSError, AttributeError):
        return None


_LIBZ = _libz()
_Z_FINISH, _Z_STREAM_END = 4, 1


class Deflater:
    """Raw deflate at a level, primed with a dictionary once; each call deflates one snapshot whole."""

    def __init__(self, level: int, zdict: bytes | None) -> None:
        self._primed: _ZStream | None = None
        if _LIBZ is not None:
            stream = _ZStream()
            if _LIBZ.deflateInit2_(ctypes.byref(stream), level, zlib.DEFLATED, -15, 8, zlib.Z_DEFAULT_STRATEGY,
                                   _LIBZ.zlibVersion(), ctypes.sizeof(_ZStream)) == 0:
                if not zdict or _LIBZ.deflateSetDictionary(ctypes.byref(stream), zdict, len(zdict)) == 0:
                    self._primed, self._primed_ref = stream, ctypes.byref(stream)
                    self._stream = _ZStream()  # each snapshot's copy of the primed one, ended after it
                    self._ref = ctypes.byref(self._stream)
                    self._out = ctypes.create_string_buffer(16 * 1024)
                else:
                    _LIBZ.deflateEnd(ctypes.byref(stream))
        self._packer = zlib.compressobj(level, zlib.DEFLATED, -15, 8, **({"zdict": zdict} if zdict else {}))

    def __call__(self, data: bytes) -> bytes:
        primed = self._primed
        if primed is None:
            packer = self._packer.copy()
            return packer.compress(data) + packer.flush()
        stream, ref = self._stream, self._ref
        if _LIBZ.deflateCopy(ref, self._primed_ref) != 0:
            raise MemoryError("deflateCopy")
        try:
            size = len(data) + (len(data) >> 3) + 64  # deflate's worst case is +0.03% and a few bytes
            if size > len(self._out):
                self._out = ctypes.create_string_buffer(size)
            stream.next_in = data
            stream.avail_in = len(data)
            stream.next_out = self._out_at = ctypes.addressof(self._out)
            stream.avail_out = size
            if _LIBZ.deflate(ref, _Z_FINISH) == _Z_STREAM_END:
                return ctypes.string_at(self._out_at, size - stream.avail_out)
        finally:
            stream.next_in = None
            _LIBZ.deflateEnd(ref)
        packer = self._packer.copy()  # not expected (the buffer fits deflate's worst case): Python's zlib
        return packer.compress(data) + packer.flush()

    def __del__(self) -> None:
        if self._primed is not None and _LIBZ is not None:
            _LIBZ.deflateEnd(ctypes.byref(self._primed))
            self._primed = None
