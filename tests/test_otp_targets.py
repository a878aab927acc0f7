"""Targets run inside OS-process children by the otp tests (kept free of pytest so children start fast).

Not a test module: it holds no tests, only picklable functions the children import.
"""

import ctypes
import os
import pathlib
import signal
import time


def sleep_forever() -> None:
    while True:
        time.sleep(60)


def raise_error() -> None:
    raise RuntimeError("worker failed on purpose")


def exit_with(code: int) -> None:
    os._exit(code)


def segfault() -> None:
    ctypes.string_at(0)


def ignore_sigterm(ready_path: str) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    pathlib.Path(ready_path).write_text("ready")
    sleep_forever()


def exit_after(seconds: float, code: int) -> None:
    time.sleep(seconds)
    os._exit(code)
