"""Pure numpy/tensorly factorisations: truncated (optionally whitened) SVD and Tucker-2."""

from __future__ import annotations

import math

import numpy as np


def break_even_rank(m: int, n: int) -> float:
    """A rank-r factorisation of an m x n matrix saves parameters only when r < m*n/(m+n)."""
    return m * n / (m + n)


def rank_from_ratio(ratio: float, full: int, min_rank: int = 1) -> int:
    return int(min(full, max(min_rank, math.ceil(ratio * full - 1e-9))))


def rank_from_energy(s: np.ndarray, energy: float, min_rank: int = 1) -> int:
    """Smallest rank keeping `energy` of the squared singular values."""
    e = np.asarray(s, dtype=np.float64) ** 2
    total = e.sum()
    if total <= 0:
        return min(len(s), min_rank)
    r = int(np.searchsorted(np.cumsum(e) / total, energy - 1e-12) + 1)
    return int(min(len(s), max(min_rank, r)))


def whitening(gram: np.ndarray) -> np.ndarray:
    """Lower-triangular L with L L^T = X^T X (+ a small ridge so it is positive definite)."""
    g = np.asarray(gram, dtype=np.float64)
    scale = float(np.mean(np.diag(g))) or 1.0
    ridge = 1e-6
    for _ in range(8):
        try:
            return np.linalg.cholesky(g + ridge * scale * np.eye(len(g)))
        except np.linalg.LinAlgError:
            ridge *= 10  # rank-deficient inputs (dead ReLUs, padding): damp harder
    return np.linalg.cholesky(g + scale * np.eye(len(g)))


def svd_spectrum(w: np.ndarray, chol: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SVD of W [K, N] (the K side meets the input); whitened by L^T when `chol` is given."""
    a = np.asarray(w, dtype=np.float64)
    if chol is not None:
        a = chol.T @ a
    return np.linalg.svd(a, full_matrices=False)


def svd_factors(
    w: np.ndarray, rank: int, chol: np.ndarray | None = None, spectrum=None
) -> tuple[np.ndarray, np.ndarray]:
    """W [K, N] ~= A [K, r] @ B [r, N], minimising ||W - AB|| or, whitened, ||X(W - AB)||.

    With X^T X = L L^T: ||X(W-AB)||_F = ||L^T (W-AB)||_F, so truncate the SVD of L^T W and
    map back with L^{-T} (SVD-LLM).
    """
    u, s, vt = spectrum if spectrum is not None else svd_spectrum(w, chol)
    root = np.sqrt(s[:rank])
    a = u[:, :rank] * root
    b = root[:, None] * vt[:rank]
    if chol is not None:
        from scipy.linalg import solve_triangular

        a = solve_triangular(chol.T, a, lower=False)
    return a, b


def tucker2(w: np.ndarray, rank_in: int, rank_out: int, seed: int = 0):
    """Conv weight [Cout, Cin, kh, kw] -> (first [R1, Cin, 1, 1], core [R2, R1, kh, kw],
    last [Cout, R2, 1, 1]) by Tucker decomposition on the two channel modes (HOOI)."""
    import tensorly as tl
    from tensorly.decomposition import partial_tucker

    tl.set_backend("numpy")
    (core, (u_out, u_in)), _ = partial_tucker(
        np.asarray(w, dtype=np.float64),
        rank=[rank_out, rank_in],
        modes=[0, 1],
        init="svd",
        n_iter_max=50,
        random_state=seed,
    )
    first = u_in.T[:, :, None, None]
    last = u_out[:, :, None, None]
    return first, core, last
