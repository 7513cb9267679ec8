"""The order jobs run in: round-robin between members, first-in first-out for each member,
so one member's twenty jobs do not starve another member's one."""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable


class FairQueue:
    def __init__(self) -> None:
        # user → their waiting jobs; the dict's order is whose turn comes next.
        self._jobs: OrderedDict[int, deque[int]] = OrderedDict()
        self._last_served: int | None = None  # the member whose job was popped last

    def __len__(self) -> int:
        return sum(len(q) for q in self._jobs.values())

    def __contains__(self, job_id: int) -> bool:
        return any(job_id in q for q in self._jobs.values())

    def push(self, job_id: int, user_id: int, *, front: bool = False) -> None:
        """Add a job; `front` puts it first in line (a job the worker lost is run again first)."""
        # The member served last waits at the end, their turn of this round had: a newcomer
        # goes before them (else the member whose job runs now gets two turns before them).
        last_had_turn = (user_id not in self._jobs and bool(self._jobs)
                         and next(reversed(self._jobs)) == self._last_served)
        jobs = self._jobs.setdefault(user_id, deque())
        if last_had_turn and self._last_served is not None:
            self._jobs.move_to_end(self._last_served)
        if front:
            jobs.appendleft(job_id)
            self._jobs.move_to_end(user_id, last=False)
        else:
            jobs.append(job_id)

    def pop(self) -> int | None:
        """The next job to run, or None when nothing waits."""
        if not self._jobs:
            return None
        user_id, jobs = next(iter(self._jobs.items()))
        job_id = jobs.popleft()
        self._last_served = user_id
        if jobs:
            self._jobs.move_to_end(user_id)
        else:
            del self._jobs[user_id]
        return job_id

    def pop_batch(self, joins: Callable[[list[int], int], bool], window: int) -> list[int]:
        """The next job, then the jobs among the `window - 1` after it in line that may join it.

        `joins(batch, job_id)`: whether `job_id` may join the jobs taken so far (`batch`, the
        next job first); asked in line order. A member's jobs join in their own order: once one
        of a member's jobs may not join, none of that member's later ones is asked. Each job
        taken is served as `pop` serves it: its member's turn is used. So no job is run before
        one that is more than `window - 1` places ahead of it, and a member's jobs never
        overtake each other. Returns the jobs taken, in line order ([] when nothing waits).
        """
        first = self.pop()
        if first is None:
            return []
        batch, passed = [first], set()
        for job_id in self.order()[:max(0, window - 1)]:
            user_id = next(user for user, jobs in self._jobs.items() if job_id in jobs)
            if user_id in passed:
                continue
            if not joins(batch, job_id):
                passed.add(user_id)
                continue
            jobs = self._jobs[user_id]
            jobs.remove(job_id)  # the first of that member's jobs still waiting
            self._last_served = user_id
            if jobs:
                self._jobs.move_to_end(user_id)
            else:
                del self._jobs[user_id]
            batch.append(job_id)
        return batch

    def remove(self, job_id: int) -> bool:
        for user_id, jobs in self._jobs.items():
            if job_id in jobs:
                jobs.remove(job_id)
                if not jobs:
                    del self._jobs[user_id]
                return True
        return False

    def order(self) -> list[int]:
        """All waiting jobs in the order they will run."""
        queues = [list(q) for q in self._jobs.values()]
        result: list[int] = []
        for depth in range(max((len(q) for q in queues), default=0)):
            result.extend(q[depth] for q in queues if depth < len(q))
        return result

    def positions(self) -> dict[int, int]:
        """job id → its place in line, 1 = next."""
        return {job_id: i for i, job_id in enumerate(self.order(), start=1)}
