import asyncio

from kubesandbox_operator.control.queue import MAX_BACKOFF_SECONDS, WorkQueue


async def test_a_key_added_twice_while_waiting_is_handed_out_once() -> None:
    queue: WorkQueue[str] = WorkQueue()
    queue.add("a")
    queue.add("b")
    queue.add("a")
    assert [await queue.get(), await queue.get()] == ["a", "b"]
    assert len(queue) == 0


async def test_a_key_added_during_its_pass_comes_back_only_after_the_pass() -> None:
    queue: WorkQueue[str] = WorkQueue()
    queue.add("a")
    assert await queue.get() == "a"
    queue.add("a")
    queue.add("b")
    assert await queue.get() == "b"  # "a" is not handed to a second worker meanwhile
    queue.done("b")
    queue.done("a")
    assert await asyncio.wait_for(queue.get(), 1) == "a"


async def test_a_deadline_adds_the_key_when_it_is_due_and_the_earliest_wins() -> None:
    queue: WorkQueue[str] = WorkQueue()
    queue.add_after("late", 0.2)
    queue.add_after("soon", 30)
    queue.add_after("soon", 0.05)
    assert await asyncio.wait_for(queue.get(), 1) == "soon"
    assert await asyncio.wait_for(queue.get(), 1) == "late"
    assert queue.sizes()["deadlines"] == 0


async def test_retries_back_off_until_a_success() -> None:
    queue: WorkQueue[str] = WorkQueue()
    assert [queue.retry("a", 0.5) for _ in range(4)] == [0.5, 1.0, 2.0, 4.0]
    assert queue.retry("b", 40) == 40
    assert queue.retry("b", 40) == MAX_BACKOFF_SECONDS
    queue.succeeded("a")
    queue.forget("a")
    queue.forget("b")
    assert queue.retry("a", 0.5) == 0.5


async def test_hold_waits_for_the_pass_in_flight_and_refuses_new_ones() -> None:
    queue: WorkQueue[str] = WorkQueue()
    queue.add("a")
    assert await queue.get() == "a"
    holding = asyncio.create_task(queue.hold("a"))
    await asyncio.sleep(0.01)
    assert not holding.done()
    queue.done("a")
    await asyncio.wait_for(holding, 1)
    queue.add("a")
    queue.add_after("a", 0)
    assert len(queue) == 0
    queue.forget("a")  # the object is gone: a new one of that name is welcome again
    queue.add("a")
    assert await queue.get() == "a"


async def test_forgotten_keys_leave_nothing_behind() -> None:
    queue: WorkQueue[str] = WorkQueue()
    for index in range(1000):
        queue.add(f"k{index}")
        queue.retry(f"k{index}", 5)
    for index in range(1000):
        queue.forget(f"k{index}")
    assert queue.sizes() == {"queued": 0, "active": 0, "deadlines": 0, "failing": 0}
    assert not queue.busy
