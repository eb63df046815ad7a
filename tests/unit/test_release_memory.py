"""Freed heap pages go back to the system when the daemon asks (glibc's malloc_trim)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

_CHILD = textwrap.dedent("""
    import sys
    from companion.tuning import release_free_memory

    def rss_kib():
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))

    blocks = [bytearray(4096) for _ in range(20_000)]  # about 80 MB from the heap, not mmap
    keep = blocks[-1]  # the block at the top of the heap stays, so free() cannot shrink the heap
    del blocks[:-1]
    freed = rss_kib()
    released = release_free_memory()
    print(released, freed, rss_kib(), len(keep))
""")


def test_freed_heap_pages_are_handed_back() -> None:
    out = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, check=True, timeout=60)
    released, before, after, _ = out.stdout.split()
    assert released == "True"
    assert int(before) - int(after) > 40_000, out.stdout  # KiB: most of the 80 MB freed

