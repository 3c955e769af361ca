"""Make root obey permission bits, so that the "folder not writable" cases run as root too.

Root writes through permission bits because it holds CAP_DAC_OVERRIDE (and reads through
them with CAP_DAC_READ_SEARCH). Taking both out of the calling thread's effective set makes
root a plain owner: a folder of mode 0o500 is then read-only to it, as to any user. They stay
in the permitted set, so `restore()` can raise them again. Linux only; elsewhere, and for a
non-root user (whom the bits stop anyway), nothing changes.
"""

from __future__ import annotations

import ctypes
import os
import sys

_VERSION_3 = 0x20080522  # _LINUX_CAPABILITY_VERSION_3: two 32-bit words per set
_FILE_OVERRIDES = (1 << 1) | (1 << 2)  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _caps():
    libc = ctypes.CDLL(None, use_errno=True)
    header, data = _Header(_VERSION_3, 0), (_Data * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capget")
    return libc, header, data


def _set_effective(libc, header, data) -> None:
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset")


def bits_bind_this_thread() -> bool:
    """Whether permission bits stop this thread now (after `obey_permission_bits`, or as non-root)."""
    return os.geteuid() != 0 or (sys.platform == "linux" and not _caps()[2][0].effective & _FILE_OVERRIDES)


def obey_permission_bits():
    """Drop the file-permission overrides from this thread's effective set; returns `restore()`."""
    if os.geteuid() != 0 or sys.platform != "linux":
        return lambda: None
    libc, header, data = _caps()
    before = data[0].effective
    data[0].effective &= ~_FILE_OVERRIDES
    _set_effective(libc, header, data)

    def restore() -> None:
        libc2, header2, now = _caps()
        now[0].effective = before
        _set_effective(libc2, header2, now)

    return restore
