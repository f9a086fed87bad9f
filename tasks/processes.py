"""Processes that die with the run: a killed `python -m tasks` leaves no worker or dbt behind.

Reads and writes nothing. Luigi runs tasks in forked worker processes (WORKERS > 1) and the
warehouse build runs dbt as a child; on Linux each of them asks the kernel to kill it when its
parent dies, so a kill -9 of the run cannot leave a load committing or dbt building on its own.
`alive` tells whether a process recorded by pid (a run, a download's temporary file) still exists.
"""

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int = None) -> None:
    """Have the kernel send SIGKILL to this process when its parent exits (Linux; elsewhere a no-op).

    `parent` is the pid the caller expects as parent: if it already died before the request was
    made, no signal would ever come, so the process ends itself.
    """
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if parent is not None and os.getppid() != parent:
        os._exit(1)


def alive(pid: int) -> bool:
    """Whether a process `pid` exists on this machine (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
