"""Dynamic batching, without a model framework: a numpy function stands in for the model."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from workbench.serving.model.batching import Batcher, Closed


class SlowDouble:
    """A "model" that doubles its input, takes 20 ms a call, and records the batch sizes it saw."""

    def __init__(self, fail_on: float | None = None):
        self.sizes: list[int] = []
        self.fail_on = fail_on
        self.lock = threading.Lock()

    def __call__(self, inputs):
        x = inputs["x"]
        with self.lock:
            self.sizes.append(len(x))
        time.sleep(0.02)  # the fake model's compute time, during which more requests queue up
        if self.fail_on is not None and np.any(x == self.fail_on):
            raise ValueError("poisoned input")
        return {"y": x * 2}


async def send(batcher, values):
    loop = asyncio.get_running_loop()
    futures = [batcher.submit({"x": np.array([[v]], dtype="float32")}, loop) for v in values]
    return await asyncio.gather(*futures, return_exceptions=True)


def test_concurrent_requests_share_model_calls_and_get_their_own_rows():
    model = SlowDouble()
    batcher = Batcher(model, max_batch=16)
    results = asyncio.run(send(batcher, range(40)))
    assert [float(r["y"][0, 0]) for r in results] == [2.0 * v for v in range(40)]
    assert sum(model.sizes) == 40 and len(model.sizes) < 10 and max(model.sizes) <= 16
    batcher.close()
    batcher.join(5)


def test_a_lone_request_is_not_held_back():
    batcher = Batcher(SlowDouble(), max_batch=64, max_wait=0.0)
    t0 = time.perf_counter()
    asyncio.run(send(batcher, [1.0]))
    assert time.perf_counter() - t0 < 0.5
    batcher.close()


def test_max_wait_gathers_requests_that_arrive_close_together():
    model = SlowDouble()
    batcher = Batcher(model, max_batch=64, max_wait=0.2)

    async def staggered():
        loop = asyncio.get_running_loop()
        futures = []
        for v in range(5):
            futures.append(batcher.submit({"x": np.array([[v]], dtype="float32")}, loop))
            await asyncio.sleep(0.01)  # requests arriving one by one, not at once: the point of the test
        return await asyncio.gather(*futures)

    asyncio.run(staggered())
    assert model.sizes == [5]
    batcher.close()


def test_a_failing_request_fails_alone():
    batcher = Batcher(SlowDouble(fail_on=3.0), max_batch=16)
    results = asyncio.run(send(batcher, range(6)))
    assert isinstance(results[3], ValueError)
    assert [float(r["y"][0, 0]) for i, r in enumerate(results) if i != 3] == [0.0, 2.0, 4.0, 8.0, 10.0]
    batcher.close()


def test_different_shapes_are_not_mixed():
    model = SlowDouble()
    batcher = Batcher(model, max_batch=16)

    async def mixed():
        loop = asyncio.get_running_loop()
        a = batcher.submit({"x": np.zeros((1, 2), "float32")}, loop)
        b = batcher.submit({"x": np.zeros((1, 3), "float32")}, loop)
        return await asyncio.gather(a, b)

    a, b = asyncio.run(mixed())
    assert a["y"].shape == (1, 2) and b["y"].shape == (1, 3)
    batcher.close()


def test_close_runs_what_is_queued_then_refuses():
    model = SlowDouble()
    batcher = Batcher(model, max_batch=2)

    async def run():
        loop = asyncio.get_running_loop()
        futures = [batcher.submit({"x": np.array([[v]], "float32")}, loop) for v in range(6)]
        batcher.close()
        with pytest.raises(Closed):
            batcher.submit({"x": np.array([[9.0]], "float32")}, loop)
        return await asyncio.gather(*futures)

    assert len(asyncio.run(run())) == 6
    batcher.join(5)
    assert sum(model.sizes) == 6
