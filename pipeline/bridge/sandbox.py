"""Landlock: a stdio process writes only under its own directory and reaches no process outside it.

Every process of a server's container runs as the same user (65534), so file modes cannot keep
one session's process out of another session's directory, nor from ptrace-ing the bridge (and so
reading every session's traffic) or signalling it. Landlock (Linux 5.13+) can, unprivileged: just
before the program starts, its process confines itself (and all it starts) to reading the image
(every top-level folder but the work root), using /dev's devices, and everything under its own
directory. Landlock also refuses ptrace and /proc/<pid>/{mem,environ,cwd} of processes outside
the domain and, from ABI 6, signals and abstract unix sockets outside it. Where the kernel (or a
seccomp profile) has no Landlock, processes run unconfined and `status()` says so.
"""

from __future__ import annotations

import ctypes
import functools
import os
import stat
from collections.abc import Callable

SYS_CREATE_RULESET, SYS_ADD_RULE, SYS_RESTRICT_SELF = 444, 445, 446  # the same on every arch
CREATE_RULESET_VERSION = 1
RULE_PATH_BENEATH = 1
PR_SET_NO_NEW_PRIVS = 38
EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
REFER, TRUNCATE, IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
HANDLED_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 4: (1 << 15) - 1}
HANDLED_LATEST = (1 << 16) - 1  # ABI 5 and later: IOCTL_DEV too
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1  # ABI 6
READ = EXECUTE | READ_FILE | READ_DIR
DEVICES = READ | WRITE_FILE | TRUNCATE | IOCTL_DEV  # /dev/null and friends; nothing can be made there
DEVICE_DIR = "dev"


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("fs", ctypes.c_uint64), ("net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


@functools.cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


@functools.cache
def abi() -> int:
    """The kernel's Landlock ABI version; 0 when it has none (or a seccomp profile refuses it)."""
    try:
        found = _libc().syscall(SYS_CREATE_RULESET, None, ctypes.c_size_t(0), CREATE_RULESET_VERSION)
    except (OSError, AttributeError):
        return 0
    return max(0, int(found))


def status() -> str:
    """How processes are confined, for the bridge's stats: "landlock ABI N" or why they are not."""
    version = abi()
    return f"landlock ABI {version}" if version else "none: the kernel offers no Landlock"


def ruleset(home: str, work_root: str) -> int | None:
    """A Landlock ruleset (a file descriptor the caller closes) that lets a process write only under
    `home` and read the rest of the image but `work_root`; None where Landlock is missing."""
    version = abi()
    if not version:
        return None
    handled = HANDLED_BY_ABI.get(version, HANDLED_LATEST)
    scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if version >= 6 else 0
    attr = _RulesetAttr(handled, 0, scoped)
    fd = int(_libc().syscall(SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.sizeof(attr), 0))
    if fd < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset")
    try:
        _allow_all_but(fd, os.path.realpath(work_root), handled)
        _allow(fd, home, handled)
    except OSError:
        os.close(fd)
        raise
    return fd


def _allow_all_but(fd: int, hidden: str, handled: int) -> None:
    """Grant reading everything but `hidden`: every entry of each folder on the way down to it but
    the one that leads there (a container's work root is /tmp itself; a test's is deeper)."""
    folder = "/"
    for part in [p for p in hidden.split("/") if p]:
        for entry in sorted(os.listdir(folder)):
            path = os.path.join(folder, entry)
            if entry != part and not _leads_into(path, hidden):
                _allow(fd, path, (DEVICES if path == f"/{DEVICE_DIR}" else READ) & handled)
        folder = os.path.join(folder, part)


def _leads_into(path: str, hidden: str) -> bool:
    """Whether `path` (a link, say) resolves to `hidden`, into it, or to a folder holding it."""
    target = os.path.realpath(path)
    return os.path.commonpath([target, hidden]) in (target, hidden)


def restrictor(fd: int) -> Callable[[], None]:
    """What the new process runs before the program (subprocess's preexec_fn): confine itself."""

    def restrict() -> None:
        libc = _libc()
        if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 or libc.syscall(SYS_RESTRICT_SELF, fd, 0) != 0:
            raise OSError(ctypes.get_errno(), "landlock_restrict_self")

    return restrict


def _allow(fd: int, path: str, access: int) -> None:
    """Grant `access` beneath `path` (file rights only, for a file); skip what cannot be opened."""
    try:
        target = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return  # a dangling link, a file that went away: nothing there to grant
    try:
        if not stat.S_ISDIR(os.fstat(target).st_mode):
            access &= EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV
        rule = _PathBeneath(access, target)
        if _libc().syscall(SYS_ADD_RULE, fd, RULE_PATH_BENEATH, ctypes.byref(rule), 0) != 0:
            raise OSError(ctypes.get_errno(), f"landlock_add_rule {path}")
    finally:
        os.close(target)
