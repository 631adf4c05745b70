"""Is a process alive? The one check behind the retrain lock and stale staging folders.

Inputs: a pid. Outputs: none; reads the process table of this host only.
"""

from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True
