"""Cache blocking: pointwise work cut into slabs that stay in the CPU cache.

A chain of whole-array numpy passes reads and writes every array from main
memory once per pass. Run slab by slab, the chain's arrays stay in the cache
between passes; on the two-core hosts measured this made the TV step of the
inversions 1.3 times and the phase quality map 2.5 times faster, with the
same results bit for bit.
"""

#: Size of one array's slab (:func:`cache_slices`): with the other arrays of a step (up to twenty,
#: about 15 MB) it stays in a typical L3 cache between passes. Measured best at 4 planes of 216 x 216
#: (0.75 MB) for the TV step, and at 4 planes of 205 x 205 for the phase quality map, on a two-core
#: host with 32 MB of L3.
SLAB_BYTES = 768 * 1024


def cache_slices(length, item_bytes):
    """Slices that cut ``length`` items of ``item_bytes`` each into pieces of about :data:`SLAB_BYTES`.

    At least one item per piece; the last piece may be shorter.
    """
    step = max(1, SLAB_BYTES // max(1, int(item_bytes)))
    return [slice(start, min(start + step, length)) for start in range(0, length, step)]
