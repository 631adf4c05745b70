"""Is a process alive? The one check behind the retrain lock and stale staging folders.

Inputs: a pid. Outputs: none; reads the process table of this host only.
"""

from __future__ import annotations

import os
from pathlib import Path


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid runs on this host.

    A zombie (killed, not yet reaped by its parent, e.g. a stage whose `dvc`
    was killed with it) counts as gone: it holds nothing and will never run again.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return not _zombie(pid)
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False  # no procfs (or the process just went): trust kill()
    # "pid (comm) state ...": comm may hold spaces and parentheses; state follows the last ")"
    return stat.rpartition(")")[2].split()[:1] == ["Z"]
