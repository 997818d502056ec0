"""Weight-only quantization of a decoder artifact: MatMul weights stored as 4- or 8-bit blocks
in ONNX Runtime's `MatMulNBits` (com.microsoft), activations left in float.

Decode on a CPU reads every weight once per token, so it is bound by memory bandwidth; 4-bit
weights read ~7x fewer bytes than fp32. The kernel ORT runs depends on `accuracy_level`
(MatMulNBits attribute: 0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8 activations): on CPUs with
VNNI, level 4 uses integer dot products and is the fast path; level 1 dequantizes per block
and multiplies in fp32.

Algorithms (ORT's quantizer, `onnxruntime.quantization.matmul_nbits_quantizer`, unless said):
- `rtn`: round to nearest, per block, integer zero point (MLAS's `quantize_matmul_{4,8}bits`);
- `rtn-float`: round to nearest with a float zero point, the block's min-max range. Written
  here because ORT's quantizers round the zero point to an integer (RTN, k-quant) or start
  from a rounded one (HQQ); weights that already lie on a 4-bit grid with float offsets
  (GGUF's Q4_1, as in the zoo's smollm2-135m) are reproduced exactly only with a float one.
  It is written in the offset form of generative/nbits.py, which runs ORT's fast integer
  kernel (ORT's own float-zero-point kernel is ~100x slower per call);
- `hqq`: half-quadratic quantization (Badri & Shaji 2023), float zero points, no data;
- `k-quant`: ORT's k-quant search of scales (no data);
- `gptq`: GPTQ (Frantar et al. 2022) with calibration text (the corpus's training split).

The lm_head (the MatMul producing `logits`) may stay in float or take 8 bits while the rest
takes 4 (rtn's 8-bit blocks; in a rtn-float pass, symmetric max-abs blocks, GGUF's Q8_0
grid, so a GGUF model's Q4_1 layers and Q8_0 lm_head both come back exactly); the
embedding table (a Gather) may stay in float or take `GatherBlockQuantized` blocks. Mixed
precision names MatMul nodes kept at 8 bits (see generative/mixed.py, which chooses them by
measured sensitivity).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import onnx

from inferopt.errors import InputError
from inferopt.generative.calibration import CalibrationText
from inferopt.generative.embedding import drop_unused, quantize_embedding, tie_embedding
from inferopt.generative.kv import KvLayout
from inferopt.generative.nbits import (
    BLOCKSUM,
    OFFSETS,
    max_abs_form,
    nibble_planes,
    offset_form,
)
from inferopt.generative.packing import pack_siblings
from inferopt.ortquant import nbits_quantizer

Algorithm = Literal["rtn", "rtn-float", "hqq", "k-quant", "gptq"]
ALGORITHMS: tuple[str, ...] = ("rtn", "rtn-float", "hqq", "k-quant", "gptq")
MAX_ABS = "max-abs"  # symmetric 8-bit blocks: rtn-float's companion for its 8-bit nodes
HeadChoice = Literal["same", "int8", "keep"]
EmbeddingChoice = Literal["keep", "int4", "tied"]
MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
RECORD_FILE = "inferopt_weightonly.json"  # what was applied, next to the weights it made


@dataclass(frozen=True)
class WeightOnly:
    """The int4-weight / int8-weight pass: its options.

    bits: 4 or 8. block_size: elements per quantization block along K (a power of two >= 16).
    symmetric: no zero point (rtn, k-quant). accuracy_level: MatMulNBits' compute type (0-4,
    see the module docstring). lm_head: "same" bits as the rest, "int8", or "keep" in float.
    embedding: "keep" in float, "int4" blocks (rtn, GatherBlockQuantized), or "tied": a
    table tied to the lm_head (Transpose of its weight, then Gather) reads the lm_head's
    quantized blocks, so the float table is gone and the weights are stored once.
    int8_nodes: MatMul node names quantized at 8 bits when bits is 4 (mixed precision).
    calibration_windows: text windows of 128 tokens GPTQ calibrates on.
    lm_head_accuracy_level: the lm_head's own accuracy_level (None: accuracy_level), to keep
    its input, the final hidden state, out of level 4's int8 (on SmolLM2 with rtn-float
    weights: same-top-1 0.948 -> 0.953, within the interval, for 7% of decode speed).
    8-bit blocks computed in fp32 (level 0 or 1) are written as two 4-bit planes
    (generative/nbits.py), as ORT's own 8-bit fp32 kernel is ~100x slower.

    Raises:
        ValueError: any option outside the above, or an algorithm that cannot honour it
            (symmetric rtn-float or hqq; hqq at 8 bits is allowed), or a tied embedding
            over an 8-bit lm_head computed in fp32.
    """

    bits: int = 4
    block_size: int = 32
    symmetric: bool = False
    accuracy_level: int = 4
    algorithm: str = "rtn"
    lm_head: str = "int8"
    embedding: str = "keep"
    int8_nodes: tuple[str, ...] = field(default_factory=tuple)
    calibration_windows: int = 16
    lm_head_accuracy_level: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "int8_nodes", tuple(self.int8_nodes))
        if self.bits not in (4, 8):
            raise ValueError(f"bits must be 4 or 8, got {self.bits}")
        if self.block_size < 16 or self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size must be a power of two >= 16, got {self.block_size}")
        if self.accuracy_level not in range(5):
            raise ValueError(f"accuracy_level must be 0-4, got {self.accuracy_level}")
        if self.lm_head_accuracy_level not in (None, *range(5)):
            raise ValueError(
                f"lm_head_accuracy_level must be 0-4, got {self.lm_head_accuracy_level}"
            )
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {', '.join(ALGORITHMS)}, got "
                             f"{self.algorithm!r}")  # fmt: skip
        if self.symmetric and self.algorithm in ("rtn-float", "hqq"):
            raise ValueError(f"{self.algorithm} has a float zero point; it cannot be symmetric")
        if self.lm_head not in ("same", "int8", "keep"):
            raise ValueError(f"lm_head must be same, int8 or keep, got {self.lm_head!r}")
        if self.embedding not in ("keep", "int4", "tied"):
            # ORT's quantizer writes GatherBlockQuantized at 4 bits only.
            raise ValueError(f"embedding must be keep, int4 or tied, got {self.embedding!r}")
        if self.embedding == "tied" and (
            self.lm_head == "keep"
            or (self.lm_head == "same" and self.algorithm in ("rtn-float", "hqq", "gptq"))
        ):
            raise ValueError(
                "embedding=tied reads the lm_head's integer blocks: it needs "
                "lm_head int8, or lm_head same with rtn or k-quant"
            )
        head_level = (
            self.accuracy_level
            if self.lm_head_accuracy_level is None
            else self.lm_head_accuracy_level
        )
        head_bits = 8 if self.lm_head == "int8" else self.bits
        if self.embedding == "tied" and head_bits == 8 and head_level <= 1:
            # The table reads the lm_head's blocks, so they cannot become two 4-bit planes
            # (nbits.py), and ORT's own 8-bit fp32 kernel is ~100x slower.
            raise ValueError(
                "embedding=tied with an 8-bit lm_head needs its accuracy_level 2-4, "
                f"got {head_level}"
            )
        if self.calibration_windows < 1:
            raise ValueError(f"calibration_windows must be >= 1, got {self.calibration_windows}")

    @property
    def name(self) -> str:
        """`int4-weight` or `int8-weight`, the pass's name on the command line."""
        return f"int{self.bits}-weight"

    def describe(self) -> str:
        """One line, e.g. `int4-weight rtn b32 asym acc4 lm_head=int8 (3 nodes int8)`."""
        text = (f"{self.name} {self.algorithm} b{self.block_size} "
                f"{'sym' if self.symmetric else 'asym'} acc{self.accuracy_level} "
                f"lm_head={self.lm_head}")  # fmt: skip
        if self.lm_head_accuracy_level is not None:
            text += f" lm_head_acc{self.lm_head_accuracy_level}"
        if self.embedding != "keep":
            text += f" embedding={self.embedding}"
        return text + (f" ({len(self.int8_nodes)} nodes int8)" if self.int8_nodes else "")

    def apply(self, source: str | Path, out: str | Path) -> Path:
        """Quantize the artifact folder `source` into a new artifact folder `out` (model.onnx
        with its weights in model.onnx.data, the tokenizer and genai_config copied).

        Raises:
            InputError: `source` is not a decoder artifact, or has no MatMul with a constant
                weight to quantize; `out` is `source`.
        """
        return apply_excluding(self, source, out, frozenset())


def apply_excluding(
    pass_: WeightOnly, source: str | Path, out: str | Path, skip: frozenset[str]
) -> Path:
    """`pass_.apply(source, out)` with the MatMul nodes named in `skip` left in float (the
    sensitivity analysis quantizes one layer at a time this way).

    Raises:
        InputError: as WeightOnly.apply.
    """
    source, out = Path(source), Path(out)
    if out.resolve() == source.resolve():
        raise InputError(f"{out}: the quantized artifact must go to another folder")
    model = load_decoder(source)
    groups = _groups(model, pass_, skip)
    if not any(groups.values()):
        raise InputError(f"{source}: no MatMul with a constant weight to quantize")
    for (bits, algorithm), nodes in groups.items():
        if nodes:
            model = _quantize(model, pass_, bits, algorithm, nodes, source)
    if pass_.lm_head_accuracy_level is not None:
        _set_accuracy_level(model, pass_.lm_head_accuracy_level, only_n=_vocab(model))
    if pass_.embedding == "int4":
        model = quantize_embedding(model, pass_.block_size, pass_.symmetric)
    elif pass_.embedding == "tied":
        tie_embedding(model)
    model = nibble_planes(model)
    drop_unused(model)
    _save(model, source, out, pass_)
    return out


def load_decoder(folder: Path) -> onnx.ModelProto:
    """The artifact's model.onnx with its weights in memory.

    Raises:
        InputError: no model.onnx, or not a decoder with a KV cache (KvLayout.of).
    """
    path = folder / MODEL_FILE
    if not path.is_file():
        raise InputError(f"{folder}: not a decoder artifact, no {MODEL_FILE}")
    model = onnx.load(str(path), load_external_data=True)
    KvLayout.of(model)  # refuses what is not a decoder with a KV cache, by name
    return model


def weight_matmuls(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """MatMul nodes whose second input is a 2-D float initializer: the ones quantized."""
    inits = {i.name: i for i in model.graph.initializer}
    return [
        n
        for n in model.graph.node
        if n.op_type == "MatMul"
        and n.input[1] in inits
        and len(inits[n.input[1]].dims) == 2
        and inits[n.input[1]].data_type == onnx.TensorProto.FLOAT
        and not n.name.endswith((BLOCKSUM, OFFSETS))  # the offset form's own (nbits.py)
    ]


def lm_head_node(model: onnx.ModelProto) -> str | None:
    """The MatMul whose weight's N is the logits' vocabulary size, nearest the output."""
    vocab = _vocab(model)
    inits = {i.name: i for i in model.graph.initializer}
    heads = [n.name for n in weight_matmuls(model) if inits[n.input[1]].dims[1] == vocab]
    return heads[-1] if heads else None


def _vocab(model: onnx.ModelProto) -> int | None:
    logits = next(o for o in model.graph.output if o.name == "logits")
    last = logits.type.tensor_type.shape.dim[-1]
    return last.dim_value if last.HasField("dim_value") else None


def _groups(
    model: onnx.ModelProto, pass_: WeightOnly, skip: frozenset[str]
) -> dict[tuple[int, str], list[str]]:
    """Node names per (bits, algorithm): the lm_head and mixed-precision nodes take 8 bits
    with rtn (8-bit blocks lose little whatever the algorithm), or with symmetric max-abs
    blocks in a rtn-float pass (GGUF's Q8_0 grid, which rtn's integer zero points would
    shift); the rest the pass's own."""
    head = lm_head_node(model)
    names = [n.name for n in weight_matmuls(model)]
    unknown = set(pass_.int8_nodes) - set(names)
    if unknown:
        raise InputError(f"int8_nodes not among the weight MatMuls: {sorted(unknown)[:5]}")
    main: list[str] = []
    eight: list[str] = []
    for name in names:
        if name in skip or (name == head and pass_.lm_head == "keep"):
            continue
        if pass_.bits == 4 and (
            name in pass_.int8_nodes or (name == head and pass_.lm_head == "int8")
        ):
            eight.append(name)
        else:
            main.append(name)
    groups: dict[tuple[int, str], list[str]] = {(pass_.bits, pass_.algorithm): main}
    companion = MAX_ABS if pass_.algorithm == "rtn-float" else "rtn"
    groups.setdefault((8, companion), []).extend(eight)  # int8-weight rtn: one group of all
    return groups


def _quantize(
    model: onnx.ModelProto,
    pass_: WeightOnly,
    bits: int,
    algorithm: str,
    nodes: list[str],
    source: Path,
) -> onnx.ModelProto:
    """`nodes` of `model` as MatMulNBits of `bits` with `algorithm`; others untouched. Nodes
    reading the same input are packed into one first (generative/packing.py)."""
    model, packed = pack_siblings(model, nodes)
    nodes = [n.name for n in model.graph.node if n.name in packed]
    if algorithm in ("rtn-float", MAX_ABS):
        form = offset_form if algorithm == "rtn-float" else max_abs_form
        model = form(model, set(nodes), bits, pass_.block_size, pass_.accuracy_level)
        if not any(o.domain == "com.microsoft" for o in model.opset_import):
            model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
        drop_unused(model)
        return model
    mq = nbits_quantizer()

    # Every other MatMul is excluded by name, the offset form's own included: ORT's quantizer
    # takes any MatMul with a constant weight not excluded.
    others = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name not in nodes]
    symmetric = pass_.symmetric if algorithm != "hqq" else False
    config: Any
    if algorithm == "rtn":
        config = mq.DefaultWeightOnlyQuantConfig(
            block_size=pass_.block_size,
            is_symmetric=symmetric,
            accuracy_level=pass_.accuracy_level or None,
            bits=bits,
            op_types_to_quantize=("MatMul",),
        )
    elif algorithm == "hqq":
        config = mq.HQQWeightOnlyQuantConfig(block_size=pass_.block_size, bits=bits)
    elif algorithm == "k-quant":
        config = mq.KQuantWeightOnlyQuantConfig(
            customized_weight_config={n: {"bits": bits} for n in nodes}
        )
    else:
        return _gptq(model, pass_, bits, nodes, others, source)
    quantizer = mq.MatMulNBitsQuantizer(
        model,
        bits=bits,
        block_size=pass_.block_size,
        is_symmetric=symmetric,
        accuracy_level=pass_.accuracy_level or None,
        nodes_to_exclude=others,
        algo_config=config,
    )
    # ORT's quantizer logs one INFO line per node, and its k-quant and GPTQ (derived from
    # Intel Neural Compressor) print a progress bar to stdout: keep both out of our output.
    for logger in ("onnxruntime.quantization", "neural_compressor"):
        logging.getLogger(logger).setLevel(logging.WARNING)
    with contextlib.redirect_stdout(io.StringIO()):
        quantizer.process()
    result: onnx.ModelProto = quantizer.model.model
    _set_accuracy_level(result, pass_.accuracy_level)
    return result


def _gptq(
    model: onnx.ModelProto,
    pass_: WeightOnly,
    bits: int,
    nodes: list[str],
    others: list[str],
    source: Path,
) -> onnx.ModelProto:
    """GPTQ through ORT's own implementation, called directly: MatMulNBitsQuantizer passes
    its excluded nodes on to RTN and k-quant but not to GPTQ, which would quantize them."""
    from onnxruntime.quantization.neural_compressor import gptq_quantize

    scheme = "sym" if pass_.symmetric else "asym"
    config: dict[str, Any] = {n: {"bits": bits, "group_size": pass_.block_size,
                                  "scheme": scheme} for n in nodes}  # fmt: skip
    config.update({n: "fp32" for n in others})
    reader = CalibrationText(source, pass_.calibration_windows)
    logging.getLogger("neural_compressor").setLevel(logging.WARNING)
    with contextlib.redirect_stdout(io.StringIO()):
        quantized = gptq_quantize(
            model,
            ((feed, None) for feed in reader),
            weight_config=config,
            num_bits=bits,
            group_size=pass_.block_size,
            scheme=scheme,
            n_samples=-1,
            accuracy_level=pass_.accuracy_level,
        )
    result: onnx.ModelProto = getattr(quantized, "model", quantized)
    _set_accuracy_level(result, pass_.accuracy_level)
    return result


def _set_accuracy_level(model: onnx.ModelProto, level: int, only_n: int | None = None) -> None:
    """Every MatMulNBits (of N == `only_n` if given) gets `level` (HQQ and the INC-derived
    algorithms do not set it)."""
    for node in model.graph.node:
        if node.op_type != "MatMulNBits":
            continue
        if only_n is not None and {a.name: a.i for a in node.attribute}.get("N") != only_n:
            continue
        kept = [a for a in node.attribute if a.name != "accuracy_level"]
        del node.attribute[:]
        node.attribute.extend(kept)
        if level:
            node.attribute.append(onnx.helper.make_attribute("accuracy_level", level))


def _save(model: onnx.ModelProto, source: Path, out: Path, pass_: WeightOnly) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / DATA_FILE).unlink(missing_ok=True)  # save_model appends to an existing data file
    onnx.save_model(
        model,
        str(out / MODEL_FILE),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=DATA_FILE,
        size_threshold=1024,
    )
    save_files(source, out, {"pass": pass_.name, **asdict(pass_),
                              "int8_nodes": list(pass_.int8_nodes)})  # fmt: skip


def save_files(source: Path, out: Path, record: dict[str, Any]) -> None:
    """The tokenizer, genai_config.json and the rest of `source` copied beside the new
    model.onnx, and `record` appended to the history of passes applied."""
    for item in source.iterdir():
        if item.name not in (MODEL_FILE, DATA_FILE, RECORD_FILE) and item.is_file():
            shutil.copy2(item, out / item.name)
    previous = source / RECORD_FILE
    history = json.loads(previous.read_text())["history"] if previous.is_file() else []
    (out / RECORD_FILE).write_text(json.dumps({"history": [*history, record]}, indent=1))
