"""modules/fifo_lock.py of A1111 v1.10.1 (Forge has the same): the lock behind ``queue_lock``.

What matters to an extension: ``acquire`` takes ``blocking`` and nothing else (no ``timeout``),
and waiting threads are served first come, first served.
"""
import collections
import threading


class FIFOLock:
    def __init__(self):
        self._lock = threading.Lock()
        self._inner_lock = threading.Lock()
        self._waiting = collections.deque()

    def acquire(self, blocking=True):
        with self._inner_lock:
            if self._lock.acquire(False):
                return True
            if not blocking:
                return False
            turn = threading.Event()
            self._waiting.append(turn)
        turn.wait()
        return self._lock.acquire()

    def release(self):
        with self._inner_lock:
            if self._waiting:
                self._waiting.popleft().set()
            self._lock.release()

    __enter__ = acquire

    def __exit__(self, *exc):
        self.release()
