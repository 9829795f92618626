"""The top eigenpairs of a symmetric matrix, and only those: LAPACK's ``dsyevr`` with an index range.

An exact truncated SVD keeps ``r`` of the ``n`` directions of a Gram matrix (TSV-M keeps
``n / T`` per task). ``torch.linalg.eigh`` computes all ``n`` eigenpairs (``syevd``); ``dsyevr``
computes the ``r`` wanted ones after the same tridiagonal reduction (bisection and inverse
iteration), about half the time of the full decomposition when ``r`` is small and ``n`` large:
on a 768x768 float64 Gram with ``r = 96``, 0.054 s against 0.092 s single-threaded on the 2-core
test machine (below ``n`` of about 500 MKL's full ``eigh`` is as fast; ``linalg._subset_eigh``
decides).
torch does not expose it. SciPy does twice: its Python wrapper (``scipy.linalg.lapack.dsyevr``)
holds the GIL for the whole call, so ``linalg.per_matrix``'s worker threads would take turns;
its table of LAPACK functions for Cython (``scipy.linalg.cython_lapack``, a public API) gives the
function's address, which ``ctypes`` calls with the GIL released, so the workers run side by side
(0.026 s against 0.050 s a matrix with two workers, the same matrix). While they do, OpenBLAS is
held to one thread (``single_threaded_blas``, through threadpoolctl, around ``per_matrix``'s
workers), as ``per_matrix`` holds torch to one thread per worker: left at two threads, the two
workers' calls fight over its pool (0.063 s a matrix).

Without SciPy or threadpoolctl (``available()`` is False), or where a call reports an error
(``top_eigh`` returns None), ``linalg`` uses ``torch.linalg.eigh``: the same decomposition, to
float64 rounding. Provenance records SciPy's version (none: the full ``eigh`` ran).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
from functools import lru_cache
from typing import Any, Iterator

import torch
from torch import Tensor

log = logging.getLogger(__name__)

_P = ctypes.c_void_p
_INT = ctypes.c_int  # SciPy's LAPACK for Cython takes C ints (LP64)


@lru_cache(maxsize=1)
def _dsyevr() -> Any:
    """The ctypes function of SciPy's ``dsyevr`` (Fortran calling convention), or None."""
    try:
        import threadpoolctl  # noqa: F401  (needed to hold OpenBLAS to one thread)
        from scipy.linalg import cython_lapack

        capsule = cython_lapack.__pyx_capi__["dsyevr"]
        name = ctypes.pythonapi.PyCapsule_GetName
        name.restype, name.argtypes = ctypes.c_char_p, [ctypes.py_object]
        get = ctypes.pythonapi.PyCapsule_GetPointer
        get.restype, get.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
        address = get(capsule, name(capsule))
    except Exception as exc:  # no SciPy, another SciPy layout: torch.linalg.eigh instead
        log.debug("no LAPACK dsyevr through scipy.linalg.cython_lapack (%s): full eigh instead", exc)
        return None
    return ctypes.CFUNCTYPE(None, *([_P] * 21))(address)


def available() -> bool:
    """Whether ``top_eigh`` can run here (SciPy's LAPACK and threadpoolctl are importable)."""
    return _dsyevr() is not None


@lru_cache(maxsize=1)
def _blas_controller() -> Any:
    """threadpoolctl's view of the BLAS libraries loaded once ``dsyevr`` was found (SciPy's OpenBLAS
    among them); made once, as finding them takes about a millisecond."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """OpenBLAS (SciPy's, NumPy's) held to one thread inside the block, its setting restored after;
    nothing where ``top_eigh`` is unavailable or was never asked for (so a process whose matrices
    are all too small for it never imports SciPy here). Process-wide: ``linalg.per_matrix`` holds
    it around its workers, as it holds torch to one thread each; ``linalg`` asks for ``top_eigh``
    before it starts them."""
    if _dsyevr.cache_info().currsize == 0 or not available():
        yield
        return
    with _blas_controller().limit(limits=1, user_api="blas"):
        yield


def _ref(value: Any) -> Any:
    return ctypes.cast(ctypes.pointer(value), _P)


def top_eigh(G: Tensor, r: int) -> tuple[Tensor, Tensor] | None:
    """The ``r`` largest eigenpairs of the symmetric float64 CPU matrix ``G`` (n, n), of which only
    the upper triangle (and diagonal) is read: (eigenvalues ascending (r,), eigenvectors (n, r)), as
    the last ``r`` of ``torch.linalg.eigh(G, UPLO="U")``. ``G`` is overwritten. None when the
    solver is unavailable or reports an error (``G`` is then no longer the input)."""
    fn = _dsyevr()
    n = G.shape[-1]
    if fn is None or G.dtype != torch.float64 or G.device.type != "cpu" or G.shape != (n, n) or not 0 < r <= n:
        return None
    A = G if G.is_contiguous() else G.contiguous()
    # A row-major upper triangle is LAPACK's column-major lower triangle: no transpose needed
    w = torch.empty(n, dtype=torch.float64)
    Z = torch.empty(r, n, dtype=torch.float64)  # column-major (n, r)
    isuppz = torch.empty(2 * r, dtype=torch.int32)
    jobz, rng, uplo = ctypes.c_char(b"V"), ctypes.c_char(b"I"), ctypes.c_char(b"L")
    nn, lda, ldz, il, iu = _INT(n), _INT(n), _INT(n), _INT(n - r + 1), _INT(n)
    vl, vu, abstol = ctypes.c_double(0.0), ctypes.c_double(0.0), ctypes.c_double(0.0)
    m, info = _INT(0), _INT(0)

    def call(work: Any, lwork: Any, iwork: Any, liwork: Any) -> None:
        fn(_ref(jobz), _ref(rng), _ref(uplo), _ref(nn), A.data_ptr(), _ref(lda), _ref(vl), _ref(vu), _ref(il),
           _ref(iu), _ref(abstol), _ref(m), w.data_ptr(), Z.data_ptr(), _ref(ldz), isuppz.data_ptr(), work,
           _ref(lwork), iwork, _ref(liwork), _ref(info))

    best_work, best_iwork = ctypes.c_double(0.0), _INT(0)
    call(_ref(best_work), _INT(-1), _ref(best_iwork), _INT(-1))  # workspace query
    if info.value != 0:
        return None
    work = torch.empty(max(1, int(best_work.value)), dtype=torch.float64)
    iwork = torch.empty(max(1, best_iwork.value), dtype=torch.int32)
    call(work.data_ptr(), _INT(work.numel()), iwork.data_ptr(), _INT(iwork.numel()))
    if info.value != 0 or m.value != r:
        log.debug("dsyevr: info %d, %d of %d eigenpairs: full eigh instead", info.value, m.value, r)
        return None
    return w[:r].clone(), Z.mT
