"""Linear algebra for the SVD-based methods: truncated SVDs, polar factors, orthonormal bases.

Exact decompositions are computed from the float64 Gram matrix of the smaller side
(``A^T A`` or ``A A^T``) with a symmetric eigensolver: one Gram product and one ``eigh``
instead of a bidiagonalisation with both singular-vector sets. The Gram route's error in a
direction of singular value ``s`` is about ``eps * (s_max / s)^2``, so a truncated SVD whose
kept singular values reach below ``GRAM_FALLBACK`` (1e-4) of the largest is recomputed with a
float64 LAPACK SVD of that matrix; polar factors whose Gram matrix is too ill-conditioned
fall back the same way. All functions accept
leading batch dimensions: same-shape matrices are decomposed in one call.

A truncated SVD keeping at most a quarter of a Gram side of 512 or more computes only the
eigenpairs it keeps (``lapack.top_eigh``: LAPACK ``dsyevr`` through SciPy, about half the time of the full
``torch.linalg.eigh``), where SciPy and threadpoolctl are installed; elsewhere, and on CUDA, the
full ``eigh``. The two agree to float64 rounding.

Conventions: ``V`` is returned as ``(..., n, r)`` (columns are right singular vectors);
singular directions whose singular value is at most ``ZERO_SV * sigma_max`` carry no
information and are returned as zero columns (zero singular value), so bases keep a fixed
width for batching and a zero column is equivalent to a dropped direction.

Threads: on the CPU, a batch of matrices is decomposed one matrix per worker
(``per_matrix``): ``torch.get_num_threads()`` Python threads, each running single-threaded
BLAS/LAPACK, instead of one matrix at a time with every thread in each call. Decompositions
of a few hundred columns scale poorly across threads (``sytrd``'s many synchronisation
points), and on a busy machine a multi-threaded call waits at every barrier for a descheduled
thread: an ``eigh`` of a 768x768 matrix took 6.9 s with 2 threads and 0.2 s with 1 on a
2-core machine at load 10. Each matrix is computed single-threaded whatever the batch or the
thread count, so results do not depend on either.
"""

from __future__ import annotations

import hashlib
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence, TypeVar

import torch
from torch import Tensor

from pactmerge.merging import lapack
from pactmerge.merging.params import SVDOptions

ZERO_SV = 1e-6  # singular values below this fraction of the largest count as zero
GRAM_FALLBACK = 1e-4  # a kept singular value below this fraction of the largest: float64 SVD instead of the Gram
_NULL_EIG = 1e-13  # Gram eigenvalues below this fraction of the largest: exact null space
SUBSET_SHARE = 4  # top-r eigenpairs only (lapack.top_eigh) when r <= n / SUBSET_SHARE ...
SUBSET_MIN_SIDE = 512  # ... and n >= SUBSET_MIN_SIDE: below, MKL's full eigh is as fast or faster
_SAFE_EIG = GRAM_FALLBACK**2  # above this fraction of the largest Gram eigenvalue the Gram route is accurate; in between: SVD


_T = TypeVar("_T")
_in_worker = threading.local()


def per_matrix(fn: Callable[..., _T], items: Sequence, *, device: torch.device | str | None = None) -> list[_T]:
    """``[fn(item) for item in items]``, each call with single-threaded torch; on the CPU run by
    up to ``torch.get_num_threads()`` worker threads (see the module docstring), so a matrix's
    bits depend neither on the thread count nor on the batch it is part of. The process's
    thread setting is restored afterwards. CUDA work (``device``) and nested calls (from inside
    a worker) run in the calling thread as they are.
    """
    items = list(items)
    on_cuda = device is not None and torch.device(device).type == "cuda"
    if on_cuda or getattr(_in_worker, "active", False):
        return [fn(x) for x in items]
    threads = torch.get_num_threads()
    workers = min(threads, len(items))

    def run(x):
        _in_worker.active = True
        torch.set_num_threads(1)  # this thread's OpenMP setting, and the BLAS library's
        try:
            return fn(x)
        finally:
            _in_worker.active = False

    torch.set_num_threads(1)
    try:
        with lapack.single_threaded_blas():  # SciPy's OpenBLAS too (lapack.top_eigh)
            if workers <= 1:
                return [run(x) for x in items]
            with ThreadPoolExecutor(workers, thread_name_prefix="pactmerge-linalg") as pool:
                return list(pool.map(run, items))
    finally:
        torch.set_num_threads(threads)


def top_svd(A: Tensor, r: int, opts: SVDOptions = SVDOptions(), tags=None) -> tuple[Tensor, Tensor, Tensor]:
    """Top-``r`` singular triplets of ``A`` (..., m, n): U (..., m, r), S (..., r), V (..., n, r), float64.

    ``opts.svd`` picks the exact (Gram + eigh) or randomized path; ``tags`` (one string per
    matrix, nested like ``A``'s leading dimensions) seed the randomized path's test matrices.
    Zero singular directions are zero columns (see the module docstring).
    """
    m, n = A.shape[-2:]
    if r > min(m, n):
        raise ValueError(f"rank {r} exceeds min(m, n) = {min(m, n)}")
    if r == 0:
        z = A.new_zeros((), dtype=torch.float64)
        return z.expand(*A.shape[:-2], m, 0), z.expand(*A.shape[:-2], 0), z.expand(*A.shape[:-2], n, 0)
    if opts.svd == "randomized":
        U, S, Vh = randomized_svd(A, r, opts.oversample, opts.power_iters, opts.seed, tags)
        V = Vh.mT
    else:
        U, S, V = _top_svd_gram(A, r)
    keep = S > ZERO_SV * S[..., :1]
    S = S * keep
    return U * keep.unsqueeze(-2), S, V * keep.unsqueeze(-2)


def _top_svd_gram(A: Tensor, r: int) -> tuple[Tensor, Tensor, Tensor]:
    m, n = A.shape[-2:]
    tall = m >= n
    lead = A.shape[:-2]
    flat = A.reshape(-1, m, n)

    subset = _subset_eigh(A, r)

    def one(a: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        # float64 one matrix at a time, so a stack of T task vectors is never copied whole
        x = a.double() if tall else a.double().mT
        top = lapack.top_eigh(_gram_upper(x), r) if subset else None  # the r wanted eigenpairs only
        # ascending; a failed top_eigh has overwritten its Gram, so the fallback forms it again
        lam, Q = top if top is not None else torch.linalg.eigh(_gram_upper(x), UPLO="U")
        S, Q, inv = _top_eig(lam, Q, r)
        other = (x @ Q) * inv  # left = A V / S (tall) or right = A^T U / S (wide)
        # the Gram route's error in a direction grows like eps * (s_max / s)^2: where a kept
        # singular value is weak, decompose the matrix with a float64 SVD instead
        if bool(((S > ZERO_SV * S[:1]) & (S < GRAM_FALLBACK * S[:1])).any()):
            u, sv, vh = torch.linalg.svd(x, full_matrices=False)
            return sv[:r], vh[:r].mT, u[:, :r]
        return S, Q, other

    out = per_matrix(one, flat, device=A.device)
    S = torch.stack([o[0] for o in out]).reshape(*lead, r)
    Q = torch.stack([o[1] for o in out])
    other = torch.stack([o[2] for o in out])
    left, right = (other, Q) if tall else (Q, other)
    return left.reshape(*lead, m, r), S, right.reshape(*lead, n, r)


def _subset_eigh(A: Tensor, r: int) -> bool:
    """Whether the Gram route of ``A``'s top ``r`` triplets computes only ``r`` eigenpairs
    (``lapack.top_eigh``): on the CPU, for ``r`` at most a quarter of a Gram side of at least
    ``SUBSET_MIN_SIDE``. Single-threaded on the 2-core test machine, with r = n/4, ``dsyevr`` took
    32 ms against 39 ms for ``torch.linalg.eigh`` at n = 512, 77 against 98 ms at 768 and 158
    against 235 ms at 1024 (72 ms with r = 51); at n = 448 and below it was slower (23 against 22
    ms, 11 against 9 ms at 320)."""
    n = min(A.shape[-2:])
    return (A.device.type == "cpu" and n >= SUBSET_MIN_SIDE and 0 < r * SUBSET_SHARE <= n
            and lapack.available())


def _top_eig(lam: Tensor, Q: Tensor, r: int) -> tuple[Tensor, Tensor, Tensor]:
    """Top ``r`` of an ascending eigen-decomposition: (S = sqrt(lam) descending, Q columns, 1/S or 0)."""
    lam = lam[..., -r:].flip(-1).clamp_min(0)
    Q = Q[..., -r:].flip(-1)  # slice before flipping: only the kept columns are copied
    S = lam.sqrt()
    inv = torch.where(S > ZERO_SV * S[..., :1], 1.0 / S.clamp_min(torch.finfo(S.dtype).tiny), 0.0)
    return S, Q, inv


_GRAM_BLOCK = 128  # column block of the triangular Gram product


def _gram_upper(X: Tensor) -> Tensor:
    """``X^T X`` for X (..., p, q), with only the upper triangle (and diagonal) filled.

    For ``eigh(..., UPLO="U")``, which reads nothing else: computing the upper block
    triangle only saves nearly half of the Gram's flops. Every computed entry is the same
    length-``p`` dot product as in the full product.
    """
    q = X.shape[-1]
    if q <= 2 * _GRAM_BLOCK:
        return X.mT @ X
    G = X.new_zeros(*X.shape[:-2], q, q)
    for i in range(0, q, _GRAM_BLOCK):
        j = min(i + _GRAM_BLOCK, q)
        G[..., i:j, i:] = X[..., :, i:j].mT @ X[..., :, i:]
    return G


def singular_values(A: Tensor) -> Tensor:
    """All singular values of ``A`` (..., m, n), descending, float64 (from the Gram spectrum)."""
    A = A.double()
    G = A.mT @ A if A.shape[-2] >= A.shape[-1] else A @ A.mT
    return torch.linalg.eigvalsh(G).flip(-1).clamp_min(0).sqrt()


def derive_seed(seed: int, tag: str) -> int:
    """A 63-bit generator seed from the merge seed and a matrix's tag (key, task identity, purpose)."""
    digest = hashlib.blake2b(f"{int(seed)}\x00{tag}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def gaussian_test_matrices(lead: tuple[int, ...], n: int, ell: int, seed: int, tags=None) -> Tensor:
    """Gaussian test matrices (*lead, n, ell), float64 on the CPU, one generator per matrix.

    ``tags``: nested sequences of strings with shape ``lead`` (one per matrix); matrix i is
    drawn from ``derive_seed(seed, tags[i])``, so it depends on its tag only, never on its
    position in a batch. Without tags the flat batch index is the tag.
    """
    count = 1
    for d in lead:
        count *= d
    flat = _flatten_tags(tags, lead) if tags is not None else [f"#{i}" for i in range(count)]
    out = torch.empty(count, n, ell, dtype=torch.float64)
    gen = torch.Generator(device="cpu")
    for i, tag in enumerate(flat):
        gen.manual_seed(derive_seed(seed, tag))
        torch.randn(n, ell, generator=gen, dtype=torch.float64, out=out[i])
    return out.reshape(*lead, n, ell)


def _flatten_tags(tags, lead: tuple[int, ...]) -> list[str]:
    if not lead:
        if not isinstance(tags, str):
            raise ValueError(f"expected one tag string, got {tags!r}")
        return [tags]
    if len(tags) != lead[0]:
        raise ValueError(f"tags have {len(tags)} entries along a batch dimension of size {lead[0]}")
    return [t for sub in tags for t in _flatten_tags(sub, lead[1:])]


_RSVD_CHUNK_BYTES = {"cuda": 1 << 30}  # float64 bytes of A converted at once on CUDA


def randomized_svd(
    A: Tensor, rank: int, oversample: int = 10, power_iters: int = 2, seed: int = 0, tags=None
) -> tuple[Tensor, Tensor, Tensor]:
    """Randomized truncated SVD (Halko, Martinsson & Tropp 2011): U (..., m, r), S (..., r), Vh (..., r, n), float64.

    Gaussian test matrix with ``rank + oversample`` columns per matrix, drawn on the CPU from
    a generator seeded by ``(seed, tag)`` (see ``gaussian_test_matrices``) and then moved to
    ``A``'s device: the result does not depend on the device, the batch a matrix is part of,
    or its position there. ``power_iters`` power iterations with QR re-orthonormalisation
    after every product. Everything runs in float64 (products, QR and the small SVD), so the
    only error left is the sketch's approximation error. A batch is converted to float64 one
    matrix per CPU worker (on CUDA a chunk of ``_RSVD_CHUNK_BYTES`` at a time), so no float64
    copy of the whole batch is ever held.
    """
    m, n = A.shape[-2:]
    lead = tuple(A.shape[:-2])
    ell = min(rank + oversample, m, n)
    flat = A.reshape(-1, m, n)
    names = _flatten_tags(tags, lead) if tags is not None else [f"#{i}" for i in range(flat.shape[0])]
    # on the CPU one matrix per worker (see per_matrix); on CUDA batched chunks
    per = 1 if A.device.type == "cpu" else max(1, _RSVD_CHUNK_BYTES["cuda"] // (8 * m * n))

    def chunk(i: int) -> tuple[Tensor, Tensor, Tensor]:
        a = flat[i : i + per].double()
        omega = gaussian_test_matrices((a.shape[0],), n, ell, seed, names[i : i + per]).to(a.device)
        Q = torch.linalg.qr(a @ omega).Q  # (c, m, ell)
        del omega
        for _ in range(power_iters):
            Z = torch.linalg.qr(a.mT @ Q).Q
            Q = torch.linalg.qr(a @ Z).Q
        Ub, S, Vh = torch.linalg.svd(Q.mT @ a, full_matrices=False)  # of the small (c, ell, n)
        return (Q @ Ub)[..., :rank], S[..., :rank], Vh[..., :rank, :]

    Us, Ss, Vhs = zip(*per_matrix(chunk, range(0, flat.shape[0], per), device=A.device))
    U, S, Vh = torch.cat(Us), torch.cat(Ss), torch.cat(Vhs)
    r = U.shape[-1]
    return U.reshape(*lead, m, r), S.reshape(*lead, r), Vh.reshape(*lead, r, n)


def sum_tasks_float64(taus: Tensor) -> Tensor:
    """``taus.sum(0)`` in float64 for taus (T, ...), one task at a time (no float64 copy of the stack).

    Each float32 value is exact in float64, so the task order changes the sum by float64 rounding only.
    """
    acc = taus[0].to(torch.float64, copy=True)
    for t in taus[1:]:
        acc += t
    return acc


def energy_rank(A: Tensor, share: float, opts: SVDOptions = SVDOptions(), tags=None, start: int = 16) -> Tensor:
    """Per matrix of A (..., m, n): the smallest r with sum(s_1..s_r ^2) >= share * ||A||_F^2; (...,) long, CPU.

    A zero matrix has rank 0. ``opts.svd="exact"``: from the exact spectrum. ``"randomized"``: no
    full spectrum is computed; ``||A||_F^2`` gives the total energy for free, and a randomized
    sketch of rank ``start, 2 start, 4 start, ...`` (seeded by ``tags`` and the rank) grows until
    its singular values hold the share; from ``min(m, n)`` on the exact spectrum is used. A
    sketch's singular values never exceed the true ones, so the rank found is never below the
    exact rank, and equals it when the spectrum is clear at the cut.
    """
    m, n = A.shape[-2:]
    d = min(m, n)
    lead = tuple(A.shape[:-2])
    if opts.svd != "randomized":
        return _rank_from_spectrum(singular_values(A), share).cpu()
    flat = A.reshape(-1, m, n)
    names = _flatten_tags(tags, lead) if tags is not None else [f"#{i}" for i in range(flat.shape[0])]
    total = flat.double().pow(2).sum((-2, -1)).cpu()  # (N,)
    ranks = torch.zeros(flat.shape[0], dtype=torch.long)
    pending = torch.nonzero(total > 0).flatten()
    ell = max(1, min(start, d))
    while pending.numel():
        sub = flat[pending.to(flat.device)]
        if ell >= d:
            ranks[pending] = _rank_from_spectrum(singular_values(sub), share).cpu()
            break
        sub_tags = [f"{names[i]}|energy{ell}" for i in pending.tolist()]
        S = randomized_svd(sub, ell, opts.oversample, opts.power_iters, opts.seed, sub_tags)[1].cpu()
        cum = S.pow(2).cumsum(-1)
        target = share * total[pending]
        reached = cum[:, -1] >= target
        ranks[pending[reached]] = ((cum < target[:, None]).sum(-1) + 1)[reached]
        pending = pending[~reached]
        ell *= 2
    return ranks.reshape(lead)


def _rank_from_spectrum(sv: Tensor, share: float) -> Tensor:
    """Smallest r with sum(sv[:r]^2) >= share * sum(sv^2); sv (..., d) descending -> (...,) long (0 for zero)."""
    e = sv.pow(2)
    cum = e.cumsum(-1)
    r = (cum < share * e.sum(-1, keepdim=True)).sum(-1) + 1
    return torch.where(e.sum(-1) > 0, r.clamp_max(sv.shape[-1]), torch.zeros_like(r))


def polar(X: Tensor) -> Tensor:
    """Polar factor of ``X`` (..., p, q): the closest partial isometry, ``P Q^T`` for ``X = P S Q^T``.

    float64. Directions where ``X`` is exactly rank-deficient (zero columns, repeated
    columns) are mapped to zero rather than to arbitrary completions.
    """
    return polar_and_singular_values(X)[0]


def polar_and_singular_values(X: Tensor) -> tuple[Tensor, Tensor]:
    """(polar factor of X, singular values of X descending), both float64; see ``polar``."""
    p, q = X.shape[-2:]
    out = per_matrix(_polar_one, X.reshape(-1, p, q), device=X.device)
    P = torch.stack([o[0] for o in out]).reshape(*X.shape[:-2], p, q)
    return P, torch.stack([o[1] for o in out]).reshape(*X.shape[:-2], min(p, q))


def _polar_one(X: Tensor) -> tuple[Tensor, Tensor]:
    X = X.double()
    tall = X.shape[-1] <= X.shape[-2]
    lam, Q = torch.linalg.eigh(_gram_upper(X if tall else X.mT), UPLO="U")
    lam_max = lam[-1:].clamp_min(0)
    null = lam <= _NULL_EIG * lam_max
    if bool((~null & (lam <= _SAFE_EIG * lam_max)).any()):
        # near-dependent columns: the Gram route loses accuracy there, so a float64 SVD
        U, s, Vh = torch.linalg.svd(X, full_matrices=False)
        keep = s > (_NULL_EIG**0.5) * s[:1]
        return (U * keep) @ Vh, s * keep
    inv_sqrt = torch.where(null, 0.0, lam.clamp_min(torch.finfo(lam.dtype).tiny).rsqrt())
    M = (Q * inv_sqrt) @ Q.mT
    P = X @ M if tall else M @ X
    return P, torch.where(null, 0.0, lam.clamp_min(0).sqrt()).flip(-1)


def orth_masked(A: Tensor, rtol: float = 1e-6, ref: Tensor | float | None = None) -> tuple[Tensor, Tensor]:
    """Rank-revealing orthonormal basis of range(A) for A (..., n, c), float64, fixed width.

    Returns (B, dim): B (..., n, min(n, c)) whose first ``dim`` columns are an orthonormal
    basis and whose other columns are zero. Directions with singular value at most
    ``rtol * ref`` are dropped (``ref`` defaults to the largest singular value). Unlike plain QR,
    a rank-deficient or wide ``A`` never yields spurious directions; an empty or zero ``A``
    yields an empty basis.
    """
    A = A.double()
    n, c = A.shape[-2:]
    if c == 0:
        return A.new_zeros(*A.shape[:-2], n, 0), A.new_zeros(A.shape[:-2], dtype=torch.long)
    flat = A.reshape(-1, n, c)
    out = per_matrix(lambda a: torch.linalg.svd(a, full_matrices=False)[:2], flat, device=A.device)
    U = torch.stack([o[0] for o in out]).reshape(*A.shape[:-2], n, min(n, c))
    S = torch.stack([o[1] for o in out]).reshape(*A.shape[:-2], min(n, c))
    scale = S[..., :1] if ref is None else torch.as_tensor(ref, dtype=S.dtype, device=S.device)
    keep = S > rtol * scale
    return U * keep.unsqueeze(-2), keep.sum(-1)


def orth(A: Tensor, rtol: float = 1e-6) -> Tensor:
    """Rank-revealing orthonormal basis of range(A), A (n, c): (n, r) in A's dtype, r = numerical rank.

    From an SVD: directions whose singular value is below ``rtol`` times the largest are dropped.
    """
    B, dim = orth_masked(A, rtol)
    return B[:, : int(dim)].to(A.dtype if A.dtype.is_floating_point else torch.float32)
