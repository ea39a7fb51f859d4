"""How long this process has existed: the clock of ``time_to_result_s``.

``time_to_result_s`` (``summary.json``, ``rlaccel bench``) is the time from the process's start
to a finished agent, interpreter start-up, imports and compiles included: what a user waits
for. The start is the kernel's own record, ``starttime`` in ``/proc/self/stat`` (clock ticks
after boot, 1/100 s on Linux), read against ``/proc/uptime``; where there is no ``/proc``
(macOS, Windows) it is the time this module was first imported (``import rlaccel`` does not
import it; the training loop does), which leaves out interpreter start-up and imports.
Standard library only, so a baseline can read it without importing rlaccel's dependencies.
"""

from __future__ import annotations

import os
import time

__all__ = ["process_age_s", "process_start_source"]

_IMPORTED = time.monotonic()


def _proc_age() -> float | None:
    try:
        with open("/proc/self/stat", "rb") as f:
            stat = f.read()
        with open("/proc/uptime", "rb") as f:
            uptime = float(f.read().split()[0])
        fields = stat[stat.rindex(b")") + 2 :].split()  # the command name may hold spaces and parentheses
        return uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22, starttime
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def process_age_s() -> float:
    """Seconds since this process started (``/proc``), else since this module was imported."""
    age = _proc_age()
    return age if age is not None else time.monotonic() - _IMPORTED


def process_start_source() -> str:
    """Where :func:`process_age_s` starts counting: ``"/proc/self/stat"`` or ``"import"``."""
    return "/proc/self/stat" if _proc_age() is not None else "import"
