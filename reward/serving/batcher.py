"""Dynamic batching: concurrent requests' units merged into model calls, one call at a time.

One asyncio task collects queued units into a batch (up to `max_batch_items` units and `max_batch_tokens` tokens,
waiting at most `max_wait_ms` after the first), then runs the scorer on a single worker thread, so the device only
ever sees one model call. Units with the same `key` (same prompt and images, e.g. GRPO's K completions of one prompt
sent as K requests) become one `ScoringGroup`, so the prompt and its images are encoded once (`group_merging`).

If a batch's model call fails, each unit is retried alone and only the units that still fail get the error: a bad
item never fails the requests merged with it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from common.scoring import Scorer, ScoringGroup
from reward.serving.api import RequestError, Unit


class DynamicBatcher:
    """Queue of `Unit`s scored by `scorer.score_groups` in merged batches.

    Args:
        scorer: any `common.scoring.Scorer` (a `RewardScorer`).
        max_batch_items / max_batch_tokens: budget of one model call.
        max_wait_ms: how long the first unit of a batch waits for company.
        group_merging: score units sharing prompt and images as one group.
        on_batch: called with (units, groups) after each model call (metrics).
    """

    def __init__(self, scorer: Scorer, max_batch_items: int = 32, max_batch_tokens: int = 32768,
                 max_wait_ms: float = 5.0, group_merging: bool = True,
                 on_batch: Callable[[int, int], None] | None = None):  # fmt: skip
        self.scorer = scorer
        self.max_batch_items, self.max_batch_tokens = max_batch_items, max_batch_tokens
        self.max_wait_s, self.group_merging = max_wait_ms / 1000, group_merging
        self.on_batch = on_batch
        self._queue: asyncio.Queue | None = None
        self._carry: tuple[Unit, asyncio.Future] | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reward-model")

    def depth(self) -> int:
        return (self._queue.qsize() if self._queue else 0) + (self._carry is not None)

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._run())

    async def stop(self, wait: bool = True) -> None:
        """Finish everything queued (or, with `wait=False`, drop it: its requests have had their answer), then stop
        the worker."""
        if self._task is None:
            return
        if wait:
            await self._queue.join()
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        self._executor.shutdown(wait=wait, cancel_futures=True)

    def submit(self, units: list[Unit]) -> list[asyncio.Future]:
        """Queue `units`; each future resolves to its score or raises its `RequestError`."""
        loop = asyncio.get_running_loop()
        futures = []
        for unit in units:
            fut = loop.create_future()
            self._queue.put_nowait((unit, fut))
            futures.append(fut)
        return futures

    async def _next(self, timeout: float | None):
        if self._carry is not None:
            entry, self._carry = self._carry, None
            return entry
        if timeout is None:
            return await self._queue.get()
        try:
            return self._queue.get_nowait()
        except asyncio.QueueEmpty:
            if timeout <= 0:
                return None
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            return None

    async def _collect(self) -> list[tuple[Unit, asyncio.Future]]:
        loop = asyncio.get_running_loop()
        batch = [await self._next(None)]
        tokens = batch[0][0].tokens
        deadline = loop.time() + self.max_wait_s
        while len(batch) < self.max_batch_items:
            entry = await self._next(deadline - loop.time())
            if entry is None:
                break
            if tokens + entry[0].tokens > self.max_batch_tokens:
                self._carry = entry  # opens the next batch
                break
            batch.append(entry)
            tokens += entry[0].tokens
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            try:
                results = await loop.run_in_executor(self._executor, self._score, [u for u, _ in batch])
            except Exception as e:  # never let the worker die: fail this batch's units
                results = [e] * len(batch)
            for (_, fut), result in zip(batch, results):
                if not fut.done():  # the client may have gone away
                    if isinstance(result, Exception):
                        fut.set_exception(result)
                    else:
                        fut.set_result(result)
                self._queue.task_done()

    # ------------------------------------------------------------------------------------------------ worker thread
    def _groups(self, units: list[Unit]) -> tuple[list[ScoringGroup], list[tuple[int, int]]]:
        """ScoringGroups for `units` and each unit's (group, position)."""
        groups, where, by_key = [], [], {}
        for unit in units:
            g = by_key.get(unit.key) if self.group_merging else None
            if g is None:
                g = len(groups)
                groups.append(ScoringGroup(unit.prompt, unit.images, []))
                if self.group_merging:
                    by_key[unit.key] = g
            where.append((g, len(groups[g].responses)))
            groups[g].responses.append(unit.response)
        return groups, where

    def _score(self, units: list[Unit]) -> list[float | Exception]:
        groups, where = self._groups(units)
        try:
            scores = self.scorer.score_groups(groups)
            out = [scores[g][k] for g, k in where]
        except Exception as e:
            out = [_as_error(e, units[0])] if len(units) == 1 else [self._score_alone(u) for u in units]
        if self.on_batch is not None:
            self.on_batch(len(units), len(groups))
        return out

    def _score_alone(self, unit: Unit) -> float | Exception:
        try:
            return self.scorer.score_groups([ScoringGroup(unit.prompt, unit.images, [unit.response])])[0][0]
        except Exception as e:
            return _as_error(e, unit)


def _as_error(error: Exception, unit: Unit) -> RequestError:
    if isinstance(error, ValueError):  # the scorer's refusals (too long, ...) name the problem
        return RequestError(422, "unscorable_item", str(error), unit.ref)
    return RequestError(500, "scoring_failed", f"{type(error).__name__}: {error}", unit.ref)
