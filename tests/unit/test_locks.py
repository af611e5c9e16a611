from __future__ import annotations

import threading
import time

from isdr.locks import SharedLock


def test_shared_holders_run_together_and_an_exclusive_one_waits_for_them() -> None:
    lock = SharedLock()
    order: list[str] = []
    both_in = threading.Barrier(2, timeout=5)

    def reader(name: str) -> None:
        with lock.shared():
            both_in.wait()  # would time out if shared holders excluded each other
            time.sleep(0.1)
            order.append(name)

    def writer() -> None:
        time.sleep(0.05)
        with lock.exclusive():
            order.append("writer")

    threads = [threading.Thread(target=reader, args=(n,)) for n in ("r1", "r2")]
    threads.append(threading.Thread(target=writer))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert order[-1] == "writer"


def test_a_waiting_exclusive_holder_goes_before_new_shared_ones() -> None:
    lock = SharedLock()
    order: list[str] = []
    first = threading.Event()

    def early_reader() -> None:
        with lock.shared():
            first.set()
            time.sleep(0.2)

    def writer() -> None:
        with lock.exclusive():
            order.append("writer")

    def late_reader() -> None:
        with lock.shared():
            order.append("late reader")

    threading.Thread(target=early_reader).start()
    first.wait(5)
    w = threading.Thread(target=writer)
    w.start()
    time.sleep(0.05)
    r = threading.Thread(target=late_reader)
    r.start()
    w.join(5)
    r.join(5)
    assert order == ["writer", "late reader"]
