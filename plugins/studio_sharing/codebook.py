"""1-D k-means codebooks (Deep Compression) and entropy-coded size estimates. Pure numpy/sklearn."""

from __future__ import annotations

import heapq

import numpy as np

# Above this many weights, MiniBatchKMeans is fitted on a seeded subsample; assignment of every
# weight is still exact (nearest centroid in 1-D).
FULL_KMEANS_MAX = 65536
FIT_SAMPLE_MAX = 262144


def kmeans_codebook(w: np.ndarray, bits: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(sorted codebook [<= 2**bits], uint8 indices shaped like w) for one weight tensor.

    Centroids start linearly spaced over [min, max] (Deep Compression): large weights, rare but
    important, keep their own centroids instead of being pulled to the dense middle.
    """
    flat = np.asarray(w, dtype=np.float64).ravel()
    k = 2**bits
    uniq = np.unique(flat)
    if len(uniq) <= k:  # fewer distinct values than codes: the codebook is exact
        codebook = uniq
    else:
        codebook = _fit(flat, k, seed)
    return codebook, assign(flat, codebook).reshape(np.shape(w))


def _fit(flat: np.ndarray, k: int, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans, MiniBatchKMeans
    from threadpoolctl import threadpool_limits

    init = np.linspace(flat.min(), flat.max(), k).reshape(-1, 1)
    # 1-D clustering is tiny per step; OpenMP fan-out costs more than it gains (and the app
    # shares the CPU with the GUI and other jobs).
    with threadpool_limits(1):
        if flat.size <= FULL_KMEANS_MAX:
            km = KMeans(k, init=init, n_init=1, random_state=seed, max_iter=100)
            km.fit(flat.reshape(-1, 1))
        else:
            rng = np.random.default_rng(seed)
            fit = flat if flat.size <= FIT_SAMPLE_MAX else rng.choice(flat, FIT_SAMPLE_MAX, replace=False)
            km = MiniBatchKMeans(
                k, init=init, n_init=1, random_state=seed, batch_size=4096, max_iter=20, max_no_improvement=5
            )
            km.fit(fit.reshape(-1, 1))
    return np.unique(km.cluster_centers_.ravel())


def assign(values: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    """Index of the nearest entry of a sorted 1-D codebook (exact; O(n log k))."""
    mids = (codebook[:-1] + codebook[1:]) / 2
    return np.searchsorted(mids, np.asarray(values).ravel()).astype(np.uint8)


def huffman_bits(counts) -> int:
    """Total bits of the Huffman code for symbols with these counts (zeros ignored)."""
    c = [int(x) for x in counts if x > 0]
    if len(c) <= 1:
        return sum(c)  # one symbol still needs a bit each
    heap = list(c)
    heapq.heapify(heap)
    total = 0
    while len(heap) > 1:
        a, b = heapq.heappop(heap), heapq.heappop(heap)
        total += a + b  # every merge adds one bit to each symbol below it
        heapq.heappush(heap, a + b)
    return total


def huffman_bytes_from_histogram(hist_counts, hist_edges, bits: int) -> int:
    """Huffman size of the indices, estimated from a weight histogram before clustering.

    Assumes linearly spaced codes over the histogram's range: bins are merged (k < bins) or split
    evenly (k > bins) into k code cells, then Huffman-coded.
    """
    counts = np.asarray(hist_counts, dtype=np.float64)
    k = 2**bits
    if counts.sum() == 0:
        return 0
    if k <= len(counts):
        cells = np.add.reduceat(counts, np.linspace(0, len(counts), k, endpoint=False).astype(int))
    else:
        cells = np.repeat(counts / (k // len(counts)), k // len(counts))
    return (huffman_bits(np.round(cells).astype(np.int64)) + 7) // 8
