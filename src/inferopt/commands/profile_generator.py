"""`inferopt profile GENERATOR`: what a causal language model costs to run here (batch 1): time to
first token per prompt length, decode tokens/s and ms/token percentiles, KV-cache and weight
bytes, peak memory and the roofline fractions (inferopt.generative.profile).

A generator is a zoo generator name (exported once into the cache, as `inferopt export` would,
without the parity check), an artifact folder whose model.onnx is a decoder with a KV cache,
or a Hugging Face causal-LM folder (exported into a temporary folder for this run).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import shutil
import sys
import tempfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from rich.console import Console
from rich.table import Table
from rich.text import Text

from inferopt import zoo
from inferopt.errors import InputError

if TYPE_CHECKING:  # imported when used: it loads onnxruntime, which the CLI's start need not
    from inferopt.generative.profile import GeneratorProfile, GeneratorProfileConfig

Kind = Literal["zoo", "artifact", "hf"]
# (flag, GeneratorProfileConfig field, parser, help); --threads is profile's own flag.
FLAGS = (
    ("--prompt-lengths", "prompt_lengths", str,
     "generators: comma-separated prompt lengths to time the first token at; default 16,128,512"),
    ("--decode-tokens", "decode_tokens", int,
     "generators: tokens timed one by one after a 128-token prompt; default 64"),
    ("--repeats", "repeats", int,
     "generators: runs per prompt length and of the decode; default 5"),
)  # fmt: skip


def add_options(parser: argparse.ArgumentParser) -> None:
    """The generator-only flags; values are checked by GeneratorProfileConfig (exit 2, one
    line), not by argparse (usage and error, two lines)."""
    for flag, field, parse, text in FLAGS:
        parser.add_argument(flag, dest=field, type=parse, default=argparse.SUPPRESS, help=text)


def given_flags(args: argparse.Namespace) -> list[str]:
    return [flag for flag, field, _, _ in FLAGS if field in vars(args)]


def kind_of(source: str) -> Kind | None:
    """How `source` is a generator, or None for every other model source (cheap: reads at
    most a config.json or a graph without its weights)."""
    from inferopt.commands.export_generator import CAUSAL_SUFFIXES

    if source in zoo.generator_names():
        return "zoo"
    if source.lower().endswith(".gguf"):
        return "hf"  # converted to a Hugging Face folder first (generative/gguf.py)
    folder = Path(source)
    if (folder / "model.onnx").is_file():
        import onnx

        from inferopt.generative.kv import KvLayout

        try:
            KvLayout.of(onnx.load(str(folder / "model.onnx"), load_external_data=False))
        except Exception:  # not a decoder, or not ONNX: the encoder path says what it is
            return None
        return "artifact"
    try:
        architectures = json.loads((folder / "config.json").read_text()).get("architectures")
    except (OSError, ValueError, AttributeError):
        return None
    first = str((architectures or [""])[0])
    return "hf" if first.endswith(CAUSAL_SUFFIXES) else None


def config_from(args: argparse.Namespace) -> GeneratorProfileConfig:
    """The config of the flags given; InputError (one line) for a value it refuses."""
    from inferopt.generative.profile import GeneratorProfileConfig

    threads = getattr(args, "threads", None)
    if threads is not None and len(threads) != 1:
        raise InputError(f"--threads: a generator is profiled at one thread count, got {threads}")
    given: dict[str, Any] = {f: getattr(args, f) for _, f, _, _ in FLAGS if f in vars(args)}
    if "prompt_lengths" in given:
        text = str(given["prompt_lengths"])
        try:
            given["prompt_lengths"] = tuple(int(p) for p in text.split(",") if p.strip())
        except ValueError:
            raise InputError(
                f"--prompt-lengths: expected comma-separated integers, got {text!r}"
            ) from None
    try:
        return GeneratorProfileConfig(threads=threads[0] if threads else None, **given)
    except ValueError as exc:
        raise InputError(f"profile: {exc}") from exc


def run(args: argparse.Namespace, kind: Kind, console: Console) -> int:
    from inferopt.generative.profile import profile_generator

    config = config_from(args)
    with artifact_folder(args.model, kind, console) as folder, Progress(console) as progress:
        profile = profile_generator(folder, config, progress=progress)
    n = profile.config.threads
    threads = f"{n} thread{'s' if n > 1 else ''}" if n else "ORT's default threads"
    console.print(Text(f"{args.model}: generator profile, batch 1, {threads}", style="bold"))
    console.print(_first_token_table(profile))
    console.print(_summary_table(profile))
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(profile.to_json(), indent=2))
        console.print(f"wrote {path}")
    return 0


@contextlib.contextmanager
def artifact_folder(source: str, kind: Kind, console: Console) -> Iterator[Path]:
    """The artifact folder of `source`: itself, the cached export of a zoo generator, or a
    temporary export of a Hugging Face folder (removed afterwards)."""
    from inferopt.generative.export import export_causal_lm

    if kind == "artifact":
        yield Path(source)
    elif kind == "zoo":
        yield _zoo_artifact(source, console)
    else:
        with tempfile.TemporaryDirectory(prefix="inferopt-generator-") as tmp:
            from inferopt.commands.export_generator import generator_folder

            _note(console, f"exporting {source} with its KV cache ...")
            hf = generator_folder(source) or Path(source)
            yield export_causal_lm(hf, Path(tmp) / "artifact")


def _zoo_artifact(name: str, console: Console) -> Path:
    """The zoo generator's artifact, exported on first use into the cache; keyed by its Hugging
    Face folder (which names its own versions) and the exporting libraries."""
    from inferopt import __version__
    from inferopt.cache import cache_dir
    from inferopt.generative.export import export_causal_lm

    hf = zoo.generator_folder(name)
    versions = [_version(d) for d in ("onnxruntime", "onnxruntime-genai", "torch", "onnx")]
    key = hashlib.sha256("|".join([hf.name, __version__, *versions]).encode()).hexdigest()[:12]
    out = cache_dir("generators") / f"{name}-{key}"
    if not (out / "model.onnx").is_file():
        partial = out.with_name(out.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        _note(console, f"exporting zoo generator {name} (once; cached in {out.parent}) ...")
        export_causal_lm(hf, partial)
        shutil.rmtree(out, ignore_errors=True)
        partial.rename(out)  # a killed export never leaves a folder that looks complete
    return out


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "none"


def _note(console: Console, message: str) -> None:
    if console.is_terminal:
        console.print(message, style="dim")
    else:
        print(message, file=sys.stderr, flush=True)


class Progress:
    """profile_generator's progress: a rich status line in a terminal, plain lines on stderr
    otherwise (so stdout holds only the tables)."""

    def __init__(self, console: Console) -> None:
        self.status = console.status("profiling ...") if console.is_terminal else None

    def __enter__(self) -> Progress:
        if self.status is not None:
            self.status.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.status is not None:
            self.status.stop()

    def __call__(self, message: str) -> None:
        if self.status is not None:
            self.status.update(message)
        else:
            print(message, file=sys.stderr, flush=True)


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3g} ms"


def _bytes(n: float) -> str:
    from inferopt.report.console import fmt_bytes

    return fmt_bytes(n)


def _first_token_table(p: GeneratorProfile) -> Table:
    table = Table(title="time to first token")
    for name in ("prompt tokens", "median", "p90", "prefill tokens/s"):
        table.add_column(name, justify="right")
    for f in p.first_token:
        table.add_row(str(f.prompt_tokens), _ms(f.median_s), _ms(f.p90_s),
                      f"{f.prefill_tokens_per_s:,.0f}")  # fmt: skip
    return table


def _summary_table(p: GeneratorProfile) -> Table:
    d, kv, w, r, hw = p.decode, p.kv, p.weights, p.roofline, p.hardware
    packed = f", {w.packed_matmuls} MatMulNBits" if w.packed_matmuls else ""
    attention = " + attention" if r.attention_counted else " (attention not counted)"
    if r.last_logits:
        attention += ", lm_head once a prompt: last-position logits"
    rows = (
        ("decode", f"{d.tokens_per_s:,.1f} tokens/s ({d.tokens} tokens x {d.runs} runs after a "
         f"{d.prompt_tokens}-token prompt)"),
        ("ms / token", f"p50 {d.ms_p50:.3g}, p90 {d.ms_p90:.3g}, p99 {d.ms_p99:.3g}"),
        ("KV cache", f"{_bytes(kv.bytes_per_token)}/token; {_bytes(kv.bytes_at_max_context)} at "
         f"{kv.max_context} tokens; {_bytes(kv.bytes_at_longest)} at {kv.longest_tokens}"),
        ("weights", f"{_bytes(w.total_bytes)} stored; {_bytes(w.bytes_per_token)} read per "
         f"token{packed}"),
        ("peak RSS", f"{_bytes(p.peak_rss_bytes)} ({p.memory_method})"),
        ("decode roofline", f"{_bytes(r.bytes_per_decoded_token)}/token (KV at "
         f"{r.mean_decode_context:g} tokens) at {r.bandwidth_bytes_per_s / 1e9:.1f} GB/s: "
         f"{r.decode_roof_tokens_per_s:,.0f} tokens/s; reached {r.decode_fraction:.1%}"),
        ("prefill roofline", f"{r.prefill_flops_per_token / 1e6:.3g} MFLOP/token (2N{attention})"
         f" at {r.prefill_tokens} tokens: {r.prefill_flops_per_s / 1e9:.3g} GFLOP/s of "
         f"{r.fp32_flops_per_s / 1e9:.3g} fp32 peak, {r.prefill_fraction_of_fp32_peak:.1%}"),
        ("prefill batched", ("FLAG: " if p.prefill_not_batched else "yes: ") + p.prefill_note),
        ("hardware", f"{hw.cpu_model or 'unknown CPU'}, {hw.usable_cores} usable cores, "
         f"onnxruntime {hw.libraries.get('onnxruntime', '?')} ({hw.fingerprint()})"),
    )  # fmt: skip
    table = Table(title="decode, memory and roofline", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for name, value in rows:
        table.add_row(name, Text(value))
    return table
