"""A Hugging Face causal LM folder -> a decoder artifact with an explicit KV cache.

The artifact is the folder ONNX Runtime GenAI runs unchanged (`og.Model(folder)`): one
`model.onnx` whose inputs are `input_ids` int64 [batch, seq], `attention_mask` int64
[batch, past+seq] and `past_key_values.{i}.key|value` float32 [batch, kv_heads, past,
head_dim], and whose outputs are `logits` float32 [batch, seq, vocab] and
`present.{i}.key|value` [batch, kv_heads, past+seq, head_dim]; `genai_config.json` in ORT
GenAI's schema; and the tokenizer files. Positions are derived inside the graph from the
attention mask (left padding included), as the model builder's graphs do, so neither
exporter has a `position_ids` input.

Two exporters write it:
- "builder": ORT GenAI's model builder (fused GroupQueryAttention, rotary embeddings and
  skip-layer-norms); only for the architectures it knows.
- "dynamo": `torch.onnx.export(dynamo=True)` of the transformers model behind a wrapper that
  takes and returns the cache as flat tensors; any architecture transformers runs with a
  `DynamicCache`.
"auto" takes the builder where it supports the architecture (faster to export and to run on
the tiny Llama: docs/generate.md), else dynamo.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

import onnx

from inferopt.errors import ExportError, InputError, first_line
from inferopt.generative.kv import DEFAULT_MAX_CONTEXT, KvLayout
from inferopt.generative.memory import check_context, hf_weight_bytes

Exporter = Literal["auto", "builder", "dynamo"]
EXPORTERS: tuple[Exporter, ...] = ("auto", "builder", "dynamo")
# The builder's text-only causal LMs with standard key/value caches (its create_model
# dispatch, onnxruntime-genai 0.18). Llama, Qwen2 and Phi-3 are the ones our tests cover.
BUILDER_ARCHITECTURES = frozenset(
    {
        "GemmaForCausalLM", "Gemma2ForCausalLM", "GraniteForCausalLM", "LlamaForCausalLM",
        "MistralForCausalLM", "NemotronForCausalLM", "OlmoForCausalLM", "PhiForCausalLM",
        "Phi3ForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "SmolLM3ForCausalLM",
    }
)  # fmt: skip
_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def read_config(folder: Path) -> dict[str, Any]:
    """The folder's config.json, checked to be a causal LM with a tokenizer.

    Raises:
        InputError: no config.json, no `*ForCausalLM` architecture, or no tokenizer file.
    """
    path = folder / "config.json"
    if not path.is_file():
        raise InputError(f"{folder}: not a Hugging Face model folder (no config.json)")
    config: dict[str, Any] = json.loads(path.read_text())
    architectures = config.get("architectures") or []
    # GPT-2 and a few older models name their causal LM head class *LMHeadModel
    if not architectures or not str(architectures[0]).endswith(_CAUSAL_SUFFIXES):
        raise InputError(
            f"{folder}: not a causal language model (architectures {architectures}, "
            "expected a *ForCausalLM or *LMHeadModel)"
        )
    if not any((folder / name).is_file() for name in _TOKENIZER_FILES):
        raise InputError(f"{folder}: no tokenizer (expected one of {', '.join(_TOKENIZER_FILES)})")
    return config


def layout_of(config: dict[str, Any], max_context: int = DEFAULT_MAX_CONTEXT) -> KvLayout:
    """The cache layout a transformers config implies (GPT-2's names included)."""
    layers = config.get("num_hidden_layers", config.get("n_layer"))
    heads = config.get("num_attention_heads", config.get("n_head"))
    hidden = config.get("hidden_size", config.get("n_embd"))
    if not isinstance(layers, int) or not isinstance(heads, int) or not isinstance(hidden, int):
        raise InputError("config.json lacks the layer, head or hidden-size counts")
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or hidden // heads
    return KvLayout(layers, kv_heads, head_dim, "float32", max_context)


def choose_exporter(architecture: str, exporter: Exporter) -> Literal["builder", "dynamo"]:
    """The exporter `exporter` means for `architecture`.

    Raises:
        InputError: "builder" asked for an architecture the builder does not know.
        ValueError: an unknown exporter name.
    """
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    if exporter == "dynamo":
        return "dynamo"
    if architecture in BUILDER_ARCHITECTURES:
        return "builder"
    if exporter == "builder":
        raise InputError(
            f"ORT GenAI's model builder does not support {architecture}; use exporter='dynamo'"
        )
    return "dynamo"


def export_causal_lm(
    source: str | Path,
    out_dir: str | Path,
    *,
    max_context: int = DEFAULT_MAX_CONTEXT,
    exporter: Exporter = "auto",
) -> Path:
    """Export the causal LM in Hugging Face folder `source` to a decoder artifact in `out_dir`
    (model.onnx + external data, genai_config.json, tokenizer files); returns `out_dir`.

    The context is capped at `max_context` tokens (or the model's window, if smaller):
    genai_config's `context_length` and `search.max_length` say so, and ORT GenAI sizes its
    cache buffers by them.

    Raises:
        ValueError: `max_context` below 1 or an unknown exporter.
        InputError: not a causal LM, no tokenizer, an architecture the chosen exporter
            does not support, or a context memory cannot hold (generative.memory).
        ExportError: the exporter failed on a supported architecture.
    """
    if max_context < 1:
        raise ValueError(f"max_context must be >= 1, got {max_context}")
    folder, out = Path(source), Path(out_dir)
    config = read_config(folder)
    architecture = str(config["architectures"][0])
    chosen = choose_exporter(architecture, exporter)
    window = config.get("max_position_embeddings", config.get("n_positions", max_context))
    context = min(max_context, int(window))
    layout = layout_of(config, context)
    # refuse a cap memory cannot hold before anything is exported (weights as fp32 + cache)
    check_context(layout, hf_weight_bytes(folder, config), asked=max_context)
    out.mkdir(parents=True, exist_ok=True)
    if chosen == "builder":
        _run_builder(folder, out)
        _fix_head_dim(out / "model.onnx", layout)
    else:
        from inferopt.generative.dynamo import export_dynamo

        export_dynamo(folder, out / "model.onnx", layout)
        _write_tokenizer(folder, out)
        write_genai_config(out, config, layout)
    _cap_context(out / "genai_config.json", context)
    return out


def _run_builder(folder: Path, out: Path) -> None:
    """ORT GenAI's builder, fp32 for the CPU, through the two calls its `__main__` makes
    (what `-i FOLDER -o OUT -p fp32 -e cpu` runs, without a second Python start and torch
    import); its progress chatter is captured, not printed."""
    from onnxruntime_genai.models import builder

    chatter = io.StringIO()
    with tempfile.TemporaryDirectory(prefix="inferopt-builder-") as cache:
        try:
            with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
                where = (None, str(folder), str(out), "fp32", "cpu", cache)
                extra = builder.parse_extra_options(*where, None)
                builder.create_model(*where, **extra)
        except Exception as exc:  # the builder raises bare Exceptions for everything
            raise ExportError(
                f"{folder}: ORT GenAI's model builder failed: {first_line(exc, named=True)}"
            ) from exc


def _fix_head_dim(model_path: Path, layout: KvLayout) -> None:
    """The builder names the cache's last axis `kv_cache_dim` (it may hold packed quantized
    caches); ours is fp32, so pin it to head_dim as the cache contract (`KvLayout.of`)
    requires. Only the graph's declared shapes change; the weights stay in model.onnx.data."""
    model = onnx.load(str(model_path), load_external_data=False)
    for value in [*model.graph.input, *model.graph.output]:
        if value.name.startswith(("past_key_values.", "present.")):
            dim = value.type.tensor_type.shape.dim[3]
            dim.ClearField("dim_param")
            dim.dim_value = layout.head_dim
    onnx.save(model, str(model_path))


def _write_tokenizer(folder: Path, out: Path) -> None:
    """The tokenizer as transformers saves it (tokenizer.json, tokenizer_config.json)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise InputError(
            f"{folder}: transformers cannot load its tokenizer: {first_line(exc)}"
        ) from exc
    tokenizer.save_pretrained(str(out))
    for extra in ("generation_config.json",):  # ORT GenAI reads search defaults from it
        if (folder / extra).is_file():
            shutil.copy(folder / extra, out / extra)


def write_genai_config(out: Path, config: dict[str, Any], layout: KvLayout) -> None:
    """genai_config.json with the keys the builder writes for the same model, except that
    past and present are separate buffers (`past_present_share_buffer` false): the dynamo
    graph concatenates the cache, it does not write into a max-length buffer as GQA does."""
    eos = config.get("eos_token_id", 0)
    heads = config.get("num_attention_heads", config.get("n_head"))
    genai = {
        "model": {
            "bos_token_id": config.get("bos_token_id", 0),
            "context_length": layout.max_context,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": "model.onnx",
                "head_size": layout.head_dim,
                "hidden_size": config.get("hidden_size", config.get("n_embd")),
                "inputs": {
                    "input_ids": "input_ids",
                    "attention_mask": "attention_mask",
                    "past_key_names": "past_key_values.%d.key",
                    "past_value_names": "past_key_values.%d.value",
                },
                "outputs": {
                    "logits": "logits",
                    "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value",
                },
                "num_attention_heads": heads,
                "num_hidden_layers": layout.layers,
                "num_key_value_heads": layout.kv_heads,
            },
            "eos_token_id": eos,
            "pad_token_id": config.get("pad_token_id")
            or (eos[0] if isinstance(eos, list) else eos),
            # ORT GenAI picks its decoder-only pipeline by this name; "decoder" is its
            # generic one, used for architectures it has no name for
            "type": config.get("model_type", "decoder"),
            "vocab_size": config.get("vocab_size"),
        },
        "search": {
            "diversity_penalty": 0.0,
            "do_sample": False,
            "early_stopping": True,
            "length_penalty": 1.0,
            "max_length": layout.max_context,
            "min_length": 0,
            "no_repeat_ngram_size": 0,
            "num_beams": 1,
            "num_return_sequences": 1,
            "past_present_share_buffer": False,
            "repetition_penalty": 1.0,
            "temperature": 1.0,
            "top_k": 50,
            "top_p": 1.0,
        },
    }
    (out / "genai_config.json").write_text(json.dumps(genai, indent=4) + "\n")


def _cap_context(path: Path, context: int) -> None:
    """Cap genai_config's context at `context` tokens: the builder writes the model's full
    window, and ORT GenAI allocates shared past/present buffers of `max_length`."""
    genai = json.loads(path.read_text())
    genai["model"]["context_length"] = min(int(genai["model"]["context_length"]), context)
    genai["search"]["max_length"] = min(int(genai["search"]["max_length"]), context)
    path.write_text(json.dumps(genai, indent=4) + "\n")
