"""Run many tasks on local threads or a ``dask.distributed`` cluster, a few at a time.

:func:`chunk_runner` opens a :class:`ChunkRunner` on a local thread pool or on an
existing cluster (checked first: the scheduler answers, every worker can open the input
files); an object every task needs (the predictors) goes to the workers once (shared by
threads, scattered to a cluster). :meth:`ChunkRunner.map` then keeps at most two tasks
per worker slot in flight and yields the results in submission order, so the caller can
write them as they come with memory bounded by the number of slots, not the number of
tasks. Nothing here knows about maps: the engine runs its chunks through it, and other
commands can run theirs.
"""

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
from typing import Any, TypeVar

from ..errors import InputFileError, SchedulerError

T = TypeVar("T")


@dataclass(frozen=True)
class ChunkRunner:
    """Where tasks run.

    Attributes:
        submit: ``submit(fn, *args)`` runs ``fn(shared, *args)`` and returns its future.
        slots: how many tasks run at once (threads, or the cluster's worker threads).
    """

    submit: Callable[..., Future]
    slots: int

    def map(self, fn: Callable[..., Any], items: Iterable[T], *args: Any
            ) -> Iterator[tuple[T, Any]]:
        """``(item, fn(shared, *args, item))`` for every item, in order.

        At most ``2 * slots`` tasks are in flight: the next is submitted as soon as the
        oldest result is taken.
        """
        todo = iter(items)
        pending = deque((item, self.submit(fn, *args, item))
                        for item in islice(todo, 2 * self.slots))
        while pending:
            item, future = pending.popleft()
            result = future.result()
            if (following := next(todo, None)) is not None:
                pending.append((following, self.submit(fn, *args, following)))
            yield item, result


def _unreadable(paths: Sequence[str]) -> dict[str, str]:
    """Each path this process cannot open, with the reason (run on every Dask worker)."""
    import rasterio
    from rasterio.errors import RasterioIOError

    from .remote import is_remote, problem, remote_env

    problems = {}
    for path in paths:
        try:
            with remote_env(path), rasterio.open(path):  # URLs with their GDAL options
                pass
        except RasterioIOError as err:
            problems[path] = problem(err) if is_remote(path) else str(err).splitlines()[0]
    return problems


@contextmanager
def chunk_runner(shared: Any, workers: int = 1, scheduler: str | None = None,
                 paths: Sequence[str] = (), timeout: float = 10.0) -> Iterator[ChunkRunner]:
    """A :class:`ChunkRunner` on ``workers`` local threads, or on the cluster at ``scheduler``.

    On a cluster, every worker first checks that it can open ``paths``; ``shared`` is then
    scattered (broadcast) once, and every task refers to that one copy per worker. On
    exit the local pool is shut down (pending tasks cancelled) or the client closed.

    Args:
        shared: the first argument of every task (e.g. the predictors).
        workers: local threads (without ``scheduler``).
        scheduler: address of a ``dask.distributed`` scheduler.
        paths: files every task reads (checked on every cluster worker).
        timeout: seconds to wait for the scheduler to answer.

    Raises:
        SchedulerError: no scheduler answers at ``scheduler`` within ``timeout`` seconds.
        InputFileError: a worker cannot open one of ``paths``.
    """
    if scheduler is None:
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="discomkd")
        try:
            yield ChunkRunner(lambda fn, *args: pool.submit(fn, shared, *args), workers)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return
    from distributed import Client

    try:
        client = Client(scheduler, set_as_default=False, timeout=timeout)
    except OSError as err:  # distributed's connection timeout is one
        raise SchedulerError(scheduler, f"no scheduler answered within {timeout:g} s "
                                        f"({str(err).splitlines()[0]}); check the address "
                                        "or raise scheduler_timeout",
                             param="scheduler_timeout") from err
    with client:
        for worker, problems in client.run(_unreadable, list(paths)).items():
            for path, problem in problems.items():
                raise InputFileError(path, f"the Dask worker {worker} cannot open it "
                                           f"({problem}); workers need the file at the "
                                           "same path")
        [remote] = client.scatter([shared], broadcast=True, hash=False)
        slots = max(1, sum(client.nthreads().values()))
        yield ChunkRunner(lambda fn, *args: client.submit(fn, remote, *args, pure=False), slots)
