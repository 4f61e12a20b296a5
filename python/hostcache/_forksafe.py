"""A process-local lock that a forked child never inherits held.

A child is a copy of its parent with one thread, the one that forked: a
lock another thread of the parent held at that moment would stay held in
the child for ever, by a thread it has no copy of. ``ForkSafeLock`` is a
``threading.Lock`` made anew in every child (``os.register_at_fork``).
Meant for module-level locks that live as long as the interpreter.
"""

from __future__ import annotations

import os
import threading
import weakref


class ForkSafeLock:
    """A context-manager lock, fresh (unheld) in every forked child."""

    __slots__ = ("_lock", "__weakref__")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        ref = weakref.ref(self)

        def renew() -> None:
            me = ref()
            if me is not None:
                me._lock = threading.Lock()

        os.register_at_fork(after_in_child=renew)

    def __enter__(self) -> bool:
        return self._lock.acquire()

    def __exit__(self, *exc) -> None:
        self._lock.release()

    def locked(self) -> bool:
        return self._lock.locked()
