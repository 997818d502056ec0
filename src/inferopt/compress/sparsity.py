"""Unstructured and N:M (2:4) magnitude sparsity of Linear and Conv weights, and what it is
honestly worth: the size of the weights when stored sparse. The exported ONNX model keeps
dense tensors with zeros in them, and ONNX Runtime's CPU kernels do not skip zeros, so the
measured latency does not change; the benchmark measures it anyway.

`sparsify_(module, SparsityConfig(...))` zeroes weights in place and returns the masks;
`Masks.apply()` re-zeroes them after each optimizer step while fine-tuning."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from inferopt.compress.config import SparsityConfig
from inferopt.compress.prune import PruneError
from inferopt.model import Model

SPARSE_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
MIN_ZERO_FRACTION = 0.25  # tensors with fewer zeros are counted dense (no format would help)


@dataclass(frozen=True)
class Masks:
    masks: dict[str, tuple[torch.Tensor, torch.Tensor]]  # layer name -> (weight, keep mask)
    skipped: tuple[str, ...]  # layers whose shape does not fit the N:M pattern

    @torch.no_grad()
    def apply(self) -> None:
        for weight, mask in self.masks.values():
            weight.mul_(mask)

    @property
    def sparsity(self) -> float:
        """Fraction of zeros over the masked weights."""
        total = sum(m.numel() for _, m in self.masks.values())
        kept = sum(int(m.sum()) for _, m in self.masks.values())
        return 1.0 - kept / max(total, 1)

    def to_json(self) -> dict[str, Any]:
        return {
            "sparsity": round(self.sparsity, 4),
            "layers": len(self.masks),
            "skipped": list(self.skipped),
        }


@torch.no_grad()
def sparsify_(module: nn.Module, config: SparsityConfig) -> Masks:
    """Zero the smallest-magnitude weights of every Linear and Conv layer not ignored."""
    names = dict(module.named_modules())
    unknown = [n for n in config.ignore if n not in names]
    if unknown:
        raise PruneError(
            f"SparsityConfig ignores layer {unknown[0]!r}, which {type(module).__name__} does "
            "not have"
        )
    masks: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    skipped = []
    for name, layer in names.items():
        if not isinstance(layer, SPARSE_LAYERS) or name in config.ignore:
            continue
        weight = layer.weight
        mask = _mask(weight.detach(), config)
        if mask is None:
            skipped.append(name)
            continue
        weight.mul_(mask)
        masks[name] = (weight, mask)
    if not masks:
        raise PruneError(f"{type(module).__name__}: no Linear or Conv layer fits {config.pattern}")
    return Masks(masks, tuple(skipped))


def _mask(weight: torch.Tensor, config: SparsityConfig) -> torch.Tensor | None:
    nm = config.nm
    if nm is None:
        k = int(weight.numel() * config.ratio)
        if k == 0:
            return torch.ones_like(weight)
        threshold = weight.abs().flatten().kthvalue(k).values
        return (weight.abs() > threshold).to(weight.dtype)
    n, m = nm
    # Groups of M run along the reduction dimension (inputs, then kernel positions: the
    # order im2col and GEMM use), where N:M hardware expects them.
    rows = weight.reshape(weight.shape[0], -1)
    if rows.shape[1] % m:
        return None
    groups = rows.abs().reshape(rows.shape[0], -1, m)
    keep = torch.zeros_like(groups)
    keep.scatter_(2, groups.topk(n, dim=2).indices, 1.0)
    return keep.reshape(weight.shape)


@dataclass(frozen=True)
class SparseSize:
    dense_bytes: int  # the model file's tensors as stored (dense)
    sparse_bytes: int  # the same with sparse-enough weights stored sparse
    sparse_tensors: int
    weight_sparsity: float  # zeros over the elements of those tensors

    def to_json(self) -> dict[str, Any]:
        return {
            "dense_bytes": self.dense_bytes,
            "sparse_bytes": self.sparse_bytes,
            "sparse_tensors": self.sparse_tensors,
            "weight_sparsity": round(self.weight_sparsity, 4),
        }


def sparse_size(model: Model, pattern: str = "unstructured") -> SparseSize:
    """The model's size with each weight that is at least a quarter zeros stored sparse,
    when that is smaller: CSR (values, 16- or 32-bit column indices, 32-bit row offsets) for
    unstructured sparsity; for N:M the kept values plus ceil(log2 M) bits of position each
    (the compressed layout sparse tensor cores use)."""
    nm = SparsityConfig(pattern=pattern).nm if pattern != "unstructured" else None
    dense = model.size_bytes
    saved, count, zeros, elements = 0, 0, 0, 0
    for init in model.proto.graph.initializer:
        if (
            init.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
            or len(init.dims) < 2
        ):
            continue
        array = numpy_helper.to_array(init)
        nonzero = int(np.count_nonzero(array))
        if 1.0 - nonzero / array.size < MIN_ZERO_FRACTION:
            continue
        stored = _stored_bytes(array, nonzero, nm)
        if stored < array.nbytes:
            saved += array.nbytes - stored
            count += 1
            zeros += array.size - nonzero
            elements += array.size
    return SparseSize(dense, dense - saved, count, zeros / max(elements, 1))


def _stored_bytes(array: np.ndarray, nonzero: int, nm: tuple[int, int] | None) -> int:
    values = nonzero * int(array.itemsize)
    if nm is not None:
        return values + math.ceil(nonzero * math.ceil(math.log2(nm[1])) / 8)
    rows = int(array.shape[0])
    columns = int(array.size) // rows
    index_bytes = 2 if columns <= 2**16 else 4
    return values + nonzero * index_bytes + (rows + 1) * 4
