"""generation.fairness: round-robin between members, first-in first-out for each."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from generation.fairness import FairQueue

A, B, C = 1, 2, 3


def drain(queue: FairQueue) -> list[int]:
    popped = []
    while (job := queue.pop()) is not None:
        popped.append(job)
    return popped


def test_empty_queue():
    queue = FairQueue()
    assert queue.pop() is None and len(queue) == 0 and queue.order() == [] and queue.positions() == {}
    assert 1 not in queue and not queue.remove(1)


def test_one_member_with_twenty_jobs_does_not_starve_another():
    queue = FairQueue()
    for job in range(100, 120):
        queue.push(job, A)
    queue.push(200, B)
    assert queue.positions()[200] == 2
    assert queue.order()[:3] == [100, 200, 101]
    assert drain(queue) == [100, 200, *range(101, 120)]


def test_a_newcomer_goes_before_the_member_who_just_had_a_turn():
    """A's first job runs (popped); B's job, arriving now, is next, not after A's second."""
    queue = FairQueue()
    for job in range(100, 120):
        queue.push(job, A)
    assert queue.pop() == 100  # running
    queue.push(200, B)
    assert queue.positions()[200] == 1
    assert drain(queue) == [200, *range(101, 120)]


def test_newcomers_wait_for_members_who_have_not_had_their_turn():
    queue = FairQueue()
    for job, user in [(1, A), (2, A), (3, B), (4, B)]:
        queue.push(job, user)
    assert queue.pop() == 1  # A's turn; B is next in the round
    queue.push(5, C)
    assert queue.order() == [3, 5, 2, 4]
    assert drain(queue) == [3, 5, 2, 4]


def test_round_robin_between_three_members_fifo_for_each():
    queue = FairQueue()
    for job, user in [(1, A), (2, A), (3, A), (4, B), (5, C), (6, C), (7, B)]:
        queue.push(job, user)
    assert queue.order() == [1, 4, 5, 2, 7, 6, 3]
    assert queue.positions() == {1: 1, 4: 2, 5: 3, 2: 4, 7: 5, 6: 6, 3: 7}
    assert len(queue) == 7 and 6 in queue and 8 not in queue
    assert drain(queue) == [1, 4, 5, 2, 7, 6, 3]


def test_remove_a_waiting_job():
    queue = FairQueue()
    for job, user in [(1, A), (2, A), (3, B)]:
        queue.push(job, user)
    assert queue.remove(2)
    assert not queue.remove(2) and not queue.remove(99)
    assert queue.positions() == {1: 1, 3: 2}
    assert queue.remove(3)  # B's only job: B leaves the rotation
    assert queue.order() == [1] and len(queue) == 1
    assert drain(queue) == [1]


def test_push_front_runs_first():
    queue = FairQueue()
    for job, user in [(1, A), (2, B), (3, B)]:
        queue.push(job, user)
    queue.push(9, B, front=True)  # a job the worker lost: run again first
    assert queue.positions()[9] == 1
    assert drain(queue) == [9, 1, 2, 3]


def test_push_front_of_the_member_just_served_stays_first():
    queue = FairQueue()
    queue.push(1, A)
    queue.push(2, B)
    assert queue.pop() == 1
    queue.push(1, A, front=True)  # the worker died running it
    queue.push(3, C)  # a newcomer does not push the lost job back
    assert queue.order()[0] == 1


_ops = st.lists(st.one_of(
    st.tuples(st.just("push"), st.integers(0, 4)),
    st.tuples(st.just("pop"), st.just(0)),
    st.tuples(st.just("remove"), st.integers(0, 40)),
), max_size=60)


@given(_ops)
def test_any_sequence_pops_each_job_once_fifo_per_member_in_the_announced_order(ops):
    queue = FairQueue()
    next_id, owner, pushed, popped = 0, {}, [], []
    for op, arg in ops:
        if op == "push":
            queue.push(next_id, arg)
            owner[next_id] = arg
            pushed.append(next_id)
            next_id += 1
        elif op == "pop":
            expected = queue.order()[:1]
            job = queue.pop()
            assert [job] == expected if expected else job is None
            if job is not None:
                popped.append(job)
        elif queue.remove(arg):
            pushed.remove(arg)
        assert len(queue) == len(pushed) - len(popped)
        assert sorted(queue.positions().values()) == list(range(1, len(queue) + 1))
    announced = queue.order()
    rest = drain(queue)
    assert rest == announced  # positions tell the truth
    done = popped + rest
    assert sorted(done) == sorted(pushed)  # every job exactly once
    for user in set(owner.values()):
        mine = [job for job in done if owner[job] == user]
        assert mine == sorted(mine)  # first in, first out for each member


# -- batches (FairQueue.pop_batch): only jobs that fairness would run soon ------------------------


def fill(queue: FairQueue, jobs: dict[int, int]) -> None:
    for job, user in jobs.items():
        queue.push(job, user)


def test_a_batch_takes_the_next_jobs_in_fair_order_and_uses_their_turns():
    queue = FairQueue()
    fill(queue, {10: A, 11: A, 12: A, 20: B, 21: B, 30: C})
    assert queue.order() == [10, 20, 30, 11, 21, 12]
    assert queue.pop_batch(lambda batch, job: True, window=4) == [10, 20, 30, 11]
    assert queue.order() == [21, 12]  # B then A: each member's turn was used in line order


def test_a_job_that_cannot_join_keeps_its_place_first_in_line():
    queue = FairQueue()
    fill(queue, {10: A, 11: A, 20: B, 30: C})  # line: 10 20 30 11; B's job cannot join
    assert queue.pop_batch(lambda batch, job: job != 20, window=4) == [10, 30, 11]
    assert queue.order() == [20]


def test_the_window_bounds_how_far_back_a_batch_reaches():
    queue = FairQueue()
    fill(queue, {10: A, 20: B, 30: C, 40: 4, 50: 5})
    assert queue.pop_batch(lambda batch, job: job in (20, 50), window=3) == [10, 20]  # 50 is 5th
    assert queue.order() == [30, 40, 50]
    assert queue.pop_batch(lambda batch, job: True, window=1) == [30]


def test_a_members_jobs_join_in_their_own_order():
    queue = FairQueue()
    fill(queue, {10: A, 11: A, 12: A, 20: B})  # line: 10 20 11 12; 11 cannot join, 12 could
    assert queue.pop_batch(lambda batch, job: job != 11, window=4) == [10, 20]
    assert queue.order() == [11, 12]


def test_joins_sees_the_batch_so_far():
    queue = FairQueue()
    fill(queue, {10: A, 20: B, 30: C, 40: 4})
    seen: list[list[int]] = []

    def joins(batch: list[int], job: int) -> bool:
        seen.append(list(batch))
        return len(batch) < 2

    assert queue.pop_batch(joins, window=4) == [10, 20]
    assert seen == [[10], [10, 20], [10, 20]]
    assert FairQueue().pop_batch(lambda batch, job: True, window=4) == []


@given(st.lists(st.integers(0, 4), max_size=30), st.sets(st.integers(0, 29)), st.integers(1, 6))
def test_any_batch_is_the_head_and_jobs_from_the_window_fifo_per_member(users, refused, window):
    queue = FairQueue()
    owner = dict(enumerate(users))
    fill(queue, owner)
    before = queue.order()
    batch = queue.pop_batch(lambda taken, job: job not in refused, window)
    assert batch[:1] == before[:1]
    assert set(batch) <= set(before[:window]) and batch == [job for job in before if job in batch]
    assert not set(batch[1:]) & refused
    for user in set(users):  # each member's taken jobs are their first ones
        mine = [job for job in before if owner[job] == user]
        taken = [job for job in batch if owner[job] == user]
        assert taken == mine[:len(taken)]
    assert sorted(queue.order() + batch) == sorted(before)  # nothing lost, nothing doubled
