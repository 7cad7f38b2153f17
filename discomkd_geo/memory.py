"""Keep the memory a CPU training step or map block frees, so the next does not fault it in.

A training step on the CPU allocates and frees the same large tensors every step
(activations and their gradients: a ResNet-18 DisCoM-KD at batch 128 has 32 MiB ones), and
so does every block the inference engine maps in mode ``pixel`` (feature maps, the
decoder's input, the smoothing's ``(K, H, W)`` arrays: 64 MiB for a 1264 px span).
glibc's ``malloc`` serves requests above its mmap threshold (at most 32 MiB) with fresh
``mmap`` regions and unmaps them when freed, and returns the free top of its heap to the
system beyond its trim threshold; every step then touches new pages, and the kernel
zeroes each on its first touch (a minor page fault, about 2.5 us per 4 KiB page on the
project's machine): 100,000-500,000 faults a training step, 0.3-1.4 s of system CPU time
on a step of 10 s; a smoothed pixel-mode map of a 2048 px scene took 13.5 s instead of
8.5-9.0 s. :func:`retain_freed_memory` raises both thresholds, so freed blocks stay in
the heap and are reused: from the third step on, a few thousand faults a step. The
process's resident size then stays near its peak instead of shrinking between steps. Used
by :func:`~discomkd_geo.training.train.train` when it trains on the CPU, and by the
inference engine's tasks on the CPU (in every process that runs them: Dask workers too).
"""

import ctypes
import ctypes.util
import functools
import sys

#: ``mallopt`` parameters (glibc ``malloc.h``).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: Blocks up to this size come from the heap (glibc accepts up to 2 GiB - 1).
MMAP_THRESHOLD = 1 << 30
#: Free memory kept at the top of the heap before any is returned (``mallopt`` takes an int).
TRIM_THRESHOLD = (1 << 31) - 1


@functools.cache  # once per process: finding the C library runs ldconfig
def retain_freed_memory() -> bool:
    """Make glibc's ``malloc`` keep freed blocks of up to 1 GiB for reuse.

    The setting is process-wide and lasts until the process ends; it changes no value
    computed, only where the memory comes from.

    Returns:
        Whether it took effect: ``False`` off Linux, or with a C library other than
        glibc (musl's ``mallopt`` does nothing).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False
    if not hasattr(libc, "gnu_get_libc_version"):  # not glibc
        return False
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)) and bool(
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
