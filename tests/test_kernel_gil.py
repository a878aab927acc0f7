"""The kernel releases the GIL for the whole computation (the NIF "dirty scheduler" of otpserve).

These tests assert on progress and overlap, never on speed: a Python thread keeps counting while a big
product runs, and two threads' products overlap in time.
"""

from __future__ import annotations

import threading
import time

import numpy as np
from otpserve import kernel


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


def test_a_python_thread_keeps_counting_while_a_big_matmul_runs() -> None:
    threads_before = kernel.get_num_threads()
    kernel.set_num_threads(1)
    try:
        a, b = big_product_inputs()
        counts: list[int] = []
        running = threading.Event()
        stop = threading.Event()

        def count() -> None:
            n = 0
            running.set()
            while not stop.is_set():
                n += 1
                if n % 1000 == 0:
                    counts.append(time.perf_counter_ns())
            counts.append(time.perf_counter_ns())

        counter = threading.Thread(target=count)
        counter.start()
        running.wait()
        start = time.perf_counter_ns()
        kernel.matmul(a, b)
        end = time.perf_counter_ns()
        stop.set()
        counter.join()
        during = [t for t in counts if start <= t <= end]
        # With the GIL held the counter would be frozen for the whole product; the switch interval is
        # 5 ms, so a held GIL allows at most a handful of ticks in a product of well over 20 ms.
        assert end - start > 20_000_000, "the product was too quick to tell"
        assert len(during) > 50, f"only {len(during)} ticks while the kernel ran"
    finally:
        kernel.set_num_threads(threads_before)


def test_two_threads_calling_the_kernel_run_at_the_same_time() -> None:
    threads_before = kernel.get_num_threads()
    kernel.set_num_threads(1)
    try:
        a, b = big_product_inputs()
        spans: dict[str, tuple[float, float]] = {}
        barrier = threading.Barrier(2)

        def work(name: str) -> None:
            barrier.wait()
            start = time.perf_counter()
            kernel.matmul(a, b)
            spans[name] = (start, time.perf_counter())

        workers = [threading.Thread(target=work, args=(name,)) for name in ("first", "second")]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        (s1, e1), (s2, e2) = spans["first"], spans["second"]
        overlap = min(e1, e2) - max(s1, s2)
        shorter = min(e1 - s1, e2 - s2)
        # Serialised by the GIL, the two spans would at most touch; running together, they mostly overlap.
        assert overlap > 0.5 * shorter, f"overlap {overlap:.4f}s of {shorter:.4f}s"
    finally:
        kernel.set_num_threads(threads_before)


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
        ticks: list[float] = []
        stop = threading.Event()

        def tick(ticks: list[float] = ticks, stop: threading.Event = stop) -> None:
            while not stop.is_set():
                ticks.append(time.perf_counter())
                time.sleep(0)

        ticker = threading.Thread(target=tick)
        ticker.start()
        while not ticks:
            time.sleep(0.001)
        start = time.perf_counter()
        for _ in range(5):
            call()
        end = time.perf_counter()
        stop.set()
        ticker.join()
        during = sum(start <= t <= end for t in ticks)
        assert during > 20, f"{name}: {during} ticks in {end - start:.3f}s"
