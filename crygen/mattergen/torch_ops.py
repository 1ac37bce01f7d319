"""The torch_scatter and torch_sparse operations MatterGen calls, in plain PyTorch.

Compiling torch_scatter and torch_sparse was almost all of a fresh set-up (about 21 min on two
cores, and ``nvcc`` on a CUDA machine), for a handful of calls: ``scatter``/``scatter_add``
(sum and mean over an index), ``segment_csr``/``segment_coo`` (sums over sorted segments, on
integer counts) and GemNet's ``SparseTensor`` row selection that lists each edge's triplets.
These are those calls, with the compiled packages' semantics where MatterGen relies on them:
an empty slot of a max/min is 0, a mean divides by the count clamped to 1, and a SparseTensor
sorts its entries by (row, column) with the same ``sort`` call, so its rows list their entries
in the same order. tests/test_torch_ops.py compares them with the compiled packages on real
sampler and training states.
"""

from __future__ import annotations

from typing import Optional

import torch

_REDUCTIONS = {"sum": "sum", "add": "sum", "mul": "prod", "mean": "mean", "max": "amax", "min": "amin"}


def _broadcast(index: torch.Tensor, src: torch.Tensor, dim: int) -> torch.Tensor:
    """``index`` expanded to ``src``'s shape along ``dim``, as torch_scatter broadcasts it."""
    if index.dim() == 1:
        shape = [1] * src.dim()
        shape[dim] = -1
        index = index.view(shape)
    return index.expand_as(src)


def scatter(src: torch.Tensor, index: torch.Tensor, dim: int = -1, out: Optional[torch.Tensor] = None,
            dim_size: Optional[int] = None, reduce: str = "sum") -> torch.Tensor:
    """torch_scatter's ``scatter``: ``src`` reduced into slots ``index`` along ``dim``."""
    if reduce not in _REDUCTIONS:
        raise ValueError(f"scatter: reduce={reduce!r} is not one of {sorted(_REDUCTIONS)}")
    dim = dim + src.dim() if dim < 0 else dim
    index = _broadcast(index, src, dim)
    if out is None:
        size = list(src.shape)
        size[dim] = int(dim_size) if dim_size is not None else (int(index.max()) + 1 if index.numel() else 0)
        out = src.new_zeros(size)
    if _REDUCTIONS[reduce] == "sum":
        return out.scatter_add_(dim, index, src)
    if reduce == "mean":
        total = out.scatter_add_(dim, index, src)
        count = torch.zeros_like(total).scatter_add_(dim, index, torch.ones_like(src)).clamp_(min=1)
        return total.div_(count) if total.is_floating_point() else total.div_(count, rounding_mode="floor")
    # max, min, mul: slots nothing reaches keep out's value (0 when torch_scatter makes out)
    return out.scatter_reduce_(dim, index, src, _REDUCTIONS[reduce], include_self=False)


def scatter_add(src: torch.Tensor, index: torch.Tensor, dim: int = -1, out: Optional[torch.Tensor] = None,
                dim_size: Optional[int] = None) -> torch.Tensor:
    return scatter(src, index, dim, out, dim_size, "sum")


def segment_csr(src: torch.Tensor, indptr: torch.Tensor, out: Optional[torch.Tensor] = None,
                reduce: str = "sum") -> torch.Tensor:
    """torch_scatter's ``segment_csr`` for a 1-D ``indptr``: segment i is
    ``src[indptr[i]:indptr[i+1]]`` along the first dimension."""
    if indptr.dim() != 1:
        raise ValueError("segment_csr: only a 1-D indptr is provided (MatterGen's use)")
    counts = indptr[1:] - indptr[:-1]
    index = torch.arange(counts.numel(), device=src.device).repeat_interleave(counts)
    return scatter(src[int(indptr[0]):int(indptr[-1])], index, 0, out, counts.numel(), reduce)


def segment_coo(src: torch.Tensor, index: torch.Tensor, out: Optional[torch.Tensor] = None,
                dim_size: Optional[int] = None, reduce: str = "sum") -> torch.Tensor:
    """torch_scatter's ``segment_coo`` for a 1-D sorted ``index`` over ``src``'s first dimension."""
    if index.dim() != 1:
        raise ValueError("segment_coo: only a 1-D index is provided (MatterGen's use)")
    return scatter(src, index, 0, out, dim_size, reduce)


class SparseStorage:
    """The entries of a :class:`SparseTensor`, sorted by row then column (CSR order)."""

    def __init__(self, row: torch.Tensor, col: torch.Tensor, value: Optional[torch.Tensor],
                 sparse_sizes: tuple[int, int], is_sorted: bool = False) -> None:
        self.sparse_sizes = (int(sparse_sizes[0]), int(sparse_sizes[1]))
        if not is_sorted and col.numel() > 0:
            key = row * self.sparse_sizes[1] + col
            if bool((key[1:] < key[:-1]).any()):
                _, perm = key.sort()  # torch_sparse's own call (without pyg-lib), hence its order
                row, col = row[perm], col[perm]
                value = None if value is None else value[perm]
        self._row, self._col, self._value = row, col, value

    def row(self) -> torch.Tensor:
        return self._row

    def col(self) -> torch.Tensor:
        return self._col

    def value(self) -> Optional[torch.Tensor]:
        return self._value

    def rowcount(self) -> torch.Tensor:
        return torch.bincount(self._row, minlength=self.sparse_sizes[0])

    def rowptr(self) -> torch.Tensor:
        ptr = self._row.new_zeros(self.sparse_sizes[0] + 1)
        torch.cumsum(self.rowcount(), dim=0, out=ptr[1:])
        return ptr


class SparseTensor:
    """torch_sparse's ``SparseTensor`` as GemNet uses it: built from (row, col, value), rows
    selected with a 1-D index tensor (``adj[idx]``), moved with ``.to``, read through ``.storage``."""

    def __init__(self, row: torch.Tensor, col: torch.Tensor, value: Optional[torch.Tensor] = None,
                 sparse_sizes: Optional[tuple] = None, is_sorted: bool = False) -> None:
        if sparse_sizes is None:
            sparse_sizes = (int(row.max()) + 1 if row.numel() else 0, int(col.max()) + 1 if col.numel() else 0)
        self.storage = SparseStorage(row, col, value, tuple(sparse_sizes), is_sorted)

    @classmethod
    def _of(cls, storage: SparseStorage) -> "SparseTensor":
        tensor = cls.__new__(cls)
        tensor.storage = storage
        return tensor

    def sparse_sizes(self) -> tuple[int, int]:
        return self.storage.sparse_sizes

    def __getitem__(self, index) -> "SparseTensor":
        """Rows ``index`` (a 1-D integer tensor, repeats allowed), in that order, as torch_sparse's
        ``index_select(0, ...)``: row i of the result is row ``index[i]``, its entries in order."""
        if not (isinstance(index, torch.Tensor) and index.dim() == 1 and not index.is_floating_point()
                and index.dtype != torch.bool):
            raise TypeError("SparseTensor: only row selection with a 1-D integer tensor is provided (GemNet's use)")
        counts = self.storage.rowcount()[index]
        starts = self.storage.rowptr()[index]
        new_ptr = counts.new_zeros(index.numel() + 1)
        torch.cumsum(counts, dim=0, out=new_ptr[1:])
        row = torch.arange(index.numel(), device=index.device).repeat_interleave(counts)
        perm = torch.arange(row.numel(), device=index.device) + (starts - new_ptr[:-1]).repeat_interleave(counts)
        value = self.storage.value()
        return self._of(SparseStorage(row, self.storage.col()[perm], None if value is None else value[perm],
                                      (index.numel(), self.storage.sparse_sizes[1]), is_sorted=True))

    def to(self, device, *args, **kwargs) -> "SparseTensor":
        s = self.storage
        value = None if s.value() is None else s.value().to(device, *args, **kwargs)
        return self._of(SparseStorage(s.row().to(device), s.col().to(device), value, s.sparse_sizes, is_sorted=True))
