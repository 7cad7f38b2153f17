"""Run many tasks on local threads or a ``dask.distributed`` cluster, a few at a time.

:func:`chunk_runner` opens a :class:`ChunkRunner` on a local thread pool or on an
existing cluster (checked first: the scheduler answers, every worker can open the input
files); an object every task needs (the predictors) goes to the workers once (shared by
threads, scattered to a cluster). :meth:`ChunkRunner.map` then keeps at most two tasks
per worker slot in flight and yields the results in submission order, so the caller can
write them as they come with memory bounded by the number of slots, not the number of
tasks. :meth:`ChunkRunner.map_with_parts` does the same for tasks that share the results
of smaller ones (parts), each computed once and kept only while a task still needs it.
Nothing here knows about maps: the engine runs its chunks through it, and other
commands can run theirs.
"""

import threading
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import InputFileError, SchedulerError

if TYPE_CHECKING:
    from distributed import Client

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)
#: Attempts at setting a cluster up (the open check, the scatter): a worker that leaves
#: between the scheduler's list and its use fails one.
SETUP_TRIES = 3


@dataclass(frozen=True)
class ChunkRunner:
    """Where tasks run.

    Attributes:
        submit: ``submit(fn, *args)`` runs ``fn(shared, *args)`` and returns its future;
            futures of this runner among ``args`` are awaited first and passed as their
            results.
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
        return self._in_order((item, self.submit(fn, *args, item)) for item in items)

    def map_with_parts(self, fn: Callable[..., Any], items: Sequence[T],
                       part_fn: Callable[..., Any], parts: Callable[[T], Sequence[K]],
                       *args: Any) -> Iterator[tuple[T, Any]]:
        """``(item, fn(shared, *args, item, *results))`` for every item, in order.

        ``results`` are ``part_fn(shared, *args, part)`` for each of ``parts(item)``, in
        that order. A part is computed once however many items need it, submitted just
        before the first of them, and let go once the last of them is submitted (it is
        then freed when that task is done): memory holds the parts of the items in flight
        and of those submitted before that share them with later ones. Items in flight are
        bounded as in :meth:`map`.
        """
        needs = [list(parts(item)) for item in items]
        last = {part: i for i, keys in enumerate(needs) for part in keys}

        def submitted() -> Iterator[tuple[T, Future]]:
            futures: dict[K, Future] = {}
            for i, (item, keys) in enumerate(zip(items, needs, strict=True)):
                for key in keys:
                    if key not in futures:
                        futures[key] = self.submit(part_fn, *args, key)
                yield item, self.submit(fn, *args, item, *(futures[k] for k in keys))
                for key in keys:
                    if last[key] == i:
                        del futures[key]

        return self._in_order(submitted())

    def _in_order(self, tasks: Iterator[tuple[T, Future]]) -> Iterator[tuple[T, Any]]:
        """The results of lazily submitted ``(item, future)`` pairs, in order.

        At most ``2 * slots`` are submitted ahead: the next one as soon as the oldest
        result is taken.
        """
        pending = deque(islice(tasks, 2 * self.slots))
        while pending:
            item, future = pending.popleft()
            result = future.result()
            pending.extend(islice(tasks, 1))
            yield item, result


def _submit_when_ready(pool: ThreadPoolExecutor, fn: Callable[..., Any], *args: Any) -> Future:
    """``pool.submit(fn, *args)`` once the futures among ``args`` are done, with their results.

    What a Dask cluster does with futures passed to a task: the task enters the pool's
    queue only when its inputs exist, so it never holds a thread waiting for them (and
    the tasks already queued keep the threads busy meanwhile). A failed input fails the
    task with the same error.
    """
    inputs = [a for a in args if isinstance(a, Future)]
    if not inputs:
        return pool.submit(fn, *args)
    out: Future = Future()
    waiting = {"inputs": len(inputs), "args": args}
    lock = threading.Lock()

    def ready(done: Future) -> None:
        failed = done.cancelled() or done.exception() is not None
        with lock:
            waiting["inputs"] -= 1
            if "args" not in waiting or (waiting["inputs"] and not failed):
                return  # inputs still missing, or ``out`` already failed
            # Let go of the inputs: a future keeps its callbacks, and this one holding them
            # would be a cycle that keeps their results until the garbage collector runs.
            ready_args = waiting.pop("args")
        # A failed input fails ``out`` here, not in the pool: the pool's shutdown cancels
        # its queue holding a lock that submitting takes.
        if done.cancelled():
            out.cancel()
        elif failed:
            out.set_exception(done.exception())
        else:
            try:
                pool.submit(_run_into, out, fn, ready_args)
            except RuntimeError as err:  # the pool was shut down: the map was abandoned
                out.set_exception(err)

    for future in inputs:
        future.add_done_callback(ready)
    return out


def _run_into(out: Future, fn: Callable[..., Any], args: Sequence[Any]) -> None:
    """``fn(*args)``, the futures among ``args`` replaced by their results, into ``out``."""
    try:
        out.set_result(fn(*(a.result() if isinstance(a, Future) else a for a in args)))
    except BaseException as err:  # handed to whoever waits on ``out``
        out.set_exception(err)


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
        SchedulerError: no scheduler answers at ``scheduler`` within ``timeout`` seconds,
            no worker is connected to it, or the workers were lost before the tasks were
            done (losing some is fine: Dask reruns their tasks on the others).
        InputFileError: a worker cannot open one of ``paths``.
    """
    if scheduler is None:
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="discomkd")
        try:
            yield ChunkRunner(lambda fn, *args: _submit_when_ready(pool, fn, shared, *args),
                              workers)
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
    from distributed import KilledWorker

    with client:
        remote, slots = _set_up(client, shared, paths, scheduler, timeout)
        try:
            yield ChunkRunner(lambda fn, *args: client.submit(fn, remote, *args, pure=False),
                              slots)
        except (CancelledError, KilledWorker) as err:
            # Dask reruns a lost worker's tasks on the others; these say it cannot: every
            # worker (and the scattered ``shared``) gone, or tasks that kill their workers.
            raise SchedulerError(scheduler, f"the cluster lost its workers before the tasks "
                                            f"were done ({_lost(client, err)}); check the "
                                            "workers and run again") from err


def _set_up(client: "Client", shared: Any, paths: Sequence[str], scheduler: str,
            timeout: float) -> tuple[Any, int]:
    """``shared`` scattered to every worker once each can open ``paths``; and the slots.

    A worker that dies meanwhile (without a nanny to restart it) stays in the scheduler's
    list for a moment, and the open check or the scatter fails on it (a ``KeyError`` from
    the scheduler, a closed connection): both are tried again on the workers left.

    Raises:
        SchedulerError: no worker is left, or they keep leaving.
        InputFileError: a worker cannot open one of ``paths``.
    """
    for _ in range(SETUP_TRIES):
        try:
            client.wait_for_workers(1, timeout=timeout)
        except TimeoutError as err:
            raise SchedulerError(scheduler, f"no Dask worker is connected to it (waited "
                                            f"{timeout:g} s); start workers or raise "
                                            "scheduler_timeout",
                                 param="scheduler_timeout") from err
        try:
            for worker, problems in client.run(_unreadable, list(paths)).items():
                for path, problem in problems.items():
                    raise InputFileError(path, f"the Dask worker {worker} cannot open it "
                                               f"({problem}); workers need the file at the "
                                               "same path")
            [remote] = client.scatter([shared], broadcast=True, hash=False)
            return remote, max(1, sum(client.nthreads().values()))
        except (KeyError, OSError) as err:  # OSError: closed connections, no valid workers
            failure = err
    raise SchedulerError(scheduler, f"its workers kept leaving while the tasks were set up "
                                    f"({type(failure).__name__}: {failure}); check the workers")


def _lost(client: "Client", err: Exception) -> str:
    """What was lost, in words: every worker, the scheduler, or Dask's reason."""
    try:
        left = len(client.scheduler_info()["workers"])
    except OSError:
        return "the scheduler is gone too"
    if left == 0:
        return "every worker left"
    return f"{left} left; {type(err).__name__}: {str(err).splitlines()[0]}"
