"""The kernel releases the GIL for the whole computation (the NIF "dirty scheduler" of otpserve).

These tests assert on progress and overlap, never on speed: a Python thread keeps counting while a big
product runs, and two threads' products overlap in time. The machine is shared and noisy, so each
measurement gets up to three attempts; with the GIL held, none of them could pass.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
from otpserve import kernel

ATTEMPTS = 3


@contextmanager
def kernel_threads(n: int) -> Iterator[None]:
    before = kernel.get_num_threads()
    kernel.set_num_threads(n)
    try:
        yield
    finally:
        kernel.set_num_threads(before)


def big_product_inputs(seconds: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Square float64 operands sized so that one single-threaded product takes roughly `seconds`."""
    n = 256
    a = np.ones((n, n))
    while True:
        start = time.perf_counter()
        kernel.matmul(a, a)
        if time.perf_counter() - start > seconds / 8 or n >= 4096:
            break
        n *= 2
        a = np.ones((n, n))
    return a, a


def passes_once(measure: Callable[[], str | None]) -> None:
    """Run `measure` (None = passed, else why not) up to ATTEMPTS times; fail with every reason."""
    reasons = []
    for _ in range(ATTEMPTS):
        reason = measure()
        if reason is None:
            return
        reasons.append(reason)
    raise AssertionError("; ".join(reasons))


def ticks_during(call: Callable[[], object]) -> tuple[int, float]:
    """How many times a pure-Python thread ticked while `call` ran, and how long it ran."""
    ticks: list[float] = []
    stop = threading.Event()

    def tick() -> None:
        while not stop.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0)

    ticker = threading.Thread(target=tick)
    ticker.start()
    while not ticks:
        time.sleep(0.001)
    start = time.perf_counter()
    call()
    end = time.perf_counter()
    stop.set()
    ticker.join()
    return sum(start <= t <= end for t in ticks), end - start


def test_a_python_thread_keeps_counting_while_a_big_matmul_runs() -> None:
    with kernel_threads(1):
        a, b = big_product_inputs()

        def measure() -> str | None:
            ticks, seconds = ticks_during(lambda: kernel.matmul(a, b))
            # With the GIL held the ticker would be frozen for the whole product: the switch interval is
            # 5 ms, so at most a couple of ticks could slip in around its edges.
            if seconds < 0.02:
                return f"the product took only {seconds:.4f}s, too quick to tell"
            if ticks <= 50:
                return f"only {ticks} ticks in {seconds:.3f}s"
            return None

        passes_once(measure)


def test_two_threads_calling_the_kernel_run_at_the_same_time() -> None:
    with kernel_threads(1):
        a, b = big_product_inputs()
        half = np.ascontiguousarray(a[: len(a) // 2, : len(a) // 2])

        def measure() -> str | None:
            spans: dict[str, tuple[float, float]] = {}
            started = threading.Event()

            def big() -> None:
                started.set()
                start = time.perf_counter()
                kernel.matmul(a, b)
                spans["big"] = (start, time.perf_counter())

            worker = threading.Thread(target=big)
            worker.start()
            started.wait()
            time.sleep(0.005)
            start = time.perf_counter()
            kernel.matmul(half, half)  # an eighth of the work of the big one
            spans["small"] = (start, time.perf_counter())
            worker.join()
            (big_start, big_end), (small_start, small_end) = spans["big"], spans["small"]
            # Had the big call held the GIL, the small one could not even have started before it ended.
            if not big_start < small_start < small_end < big_end:
                return f"big ran {big_start:.4f}..{big_end:.4f}, small {small_start:.4f}..{small_end:.4f}"
            return None

        passes_once(measure)


def test_every_function_releases_the_gil() -> None:
    """A thread that is only waiting for the GIL gets it while each kernel function computes."""
    x = np.ones((3000, 2000))
    w = np.ones((2000, 8))
    b = np.ones(8)
    calls = {
        "dense": lambda: kernel.dense(x, w, b, activation="relu"),
        "mlp_forward": lambda: kernel.mlp_forward(x, [(w, b), (np.ones((8, 2)), np.ones(2))]),
        "softmax": lambda: kernel.softmax(x),
        "argmax": lambda: kernel.argmax(x),
    }
    for name, call in calls.items():

        def measure(name: str = name, call: Callable[[], object] = call) -> str | None:
            ticks, seconds = ticks_during(lambda: [call() for _ in range(5)])
            return None if ticks > 20 else f"{name}: {ticks} ticks in {seconds:.3f}s"

        passes_once(measure)
