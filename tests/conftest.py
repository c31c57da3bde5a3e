"""Shared test guard: no test may leave a child process behind.

A leftover DataLoader worker that ignores SIGTERM makes the interpreter's exit wait forever (multiprocessing
terminates children with SIGTERM, then joins them): the whole suite would hang after its last test. Such a
worker is killed here and the test that left it fails, named.
"""
import multiprocessing
import os
import signal

import pytest


@pytest.fixture(autouse=True)
def no_process_left_behind(request):
    yield
    left = multiprocessing.active_children()
    for process in left:
        os.kill(process.pid, signal.SIGKILL)
        process.join()
    if left:
        pytest.fail(f"{request.node.nodeid} left {len(left)} child process(es) running: "
                    f"{', '.join(p.name for p in left)}")
