"""`inferopt optimize GENERATOR`: the search on a causal language model (generative/search.py):
weight-only int4/int8, mixed precision and W8A8 variants at each thread count, the fastest
within the budget kept as an artifact folder with the Pareto report.

A generator is what `inferopt profile` takes: a zoo generator name, a decoder artifact folder,
a Hugging Face causal-LM folder or a GGUF file (commands/profile_generator.py).
"""

from __future__ import annotations

import argparse
import html
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from inferopt.commands.profile_generator import Kind, Progress, artifact_folder
from inferopt.errors import InputError

if TYPE_CHECKING:
    from inferopt.generative.search import Candidate, GeneratorSearchConfig, GeneratorSearchResult
    from inferopt.generative.w8a8 import W8A8
    from inferopt.generative.weightonly import WeightOnly

OBJECTIVE_NAMES = {"latency": "decode", "decode": "decode", "ttft": "ttft", "size": "size",
                   "memory": "memory"}  # fmt: skip
REFUSED = (("recipe_from", "--recipe-from"), ("data", "--data"), ("ray", "--ray"))
PASS_NAMES = ("int4-weight", "int8-weight", "w8a8")


def config_from(args: argparse.Namespace) -> GeneratorSearchConfig:
    """The search config of the flags given; InputError (one line) for what a generator
    search cannot take."""
    from inferopt.generative.search import METRICS, GeneratorSearchConfig

    for field, flag in REFUSED:
        if getattr(args, field, None):
            raise InputError(f"{flag} is for encoder models; a generator is searched as a whole")
    objective = OBJECTIVE_NAMES.get(args.objective)
    if objective is None:
        raise InputError(f"--objective {args.objective}: a generator's objectives are decode "
                         "(default; tokens/s), ttft, size and memory")  # fmt: skip
    metric = args.metric or "perplexity"
    if metric not in METRICS:
        raise InputError(f"--metric {metric}: a generator's metrics are {', '.join(METRICS)}")
    given: dict[str, Any] = {"objective": objective, "metric": metric}
    if args.max_drop is not None:
        given["budget"] = _budget(str(args.max_drop))
    if getattr(args, "variants", None):
        given["variants"] = tuple(v.strip() for v in args.variants.split(",") if v.strip())
    try:
        return GeneratorSearchConfig(**given)
    except ValueError as exc:
        raise InputError(f"optimize: {exc}") from exc


def _budget(text: str) -> float:
    """`5%` → 0.05; a bare number is taken as is (a fraction, or nats for kl)."""
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise InputError(f"--max-drop: expected 5% or 0.05, got {text!r}") from None
    if not value >= 0:
        raise InputError(f"--max-drop must be >= 0, got {text}")
    return value


def pass_from(text: str) -> WeightOnly | W8A8:
    """`int4-weight`, `int8-weight` or `w8a8`, with options as `:name=value` (e.g.
    `int4-weight:algorithm=hqq:block_size=64:lm_head=keep`); InputError (one line) for an
    unknown pass, option or value."""
    from dataclasses import fields

    from inferopt.generative.w8a8 import W8A8
    from inferopt.generative.weightonly import WeightOnly

    name, *options = text.split(":")
    if name not in PASS_NAMES or "," in text:
        raise InputError(f"--recipe {text}: a generator takes one pass of {', '.join(PASS_NAMES)}"
                         ", with options as :name=value")  # fmt: skip
    cls: type[WeightOnly] | type[W8A8] = W8A8 if name == "w8a8" else WeightOnly
    types = {f.name: f.type for f in fields(cls)}
    given: dict[str, Any] = {"bits": int(name[3])} if cls is WeightOnly else {}
    for option in options:
        key, _, value = option.partition("=")
        if key not in types or key == "int8_nodes" or not value:
            raise InputError(f"--recipe {name}: unknown option {option!r}; options: "
                             f"{', '.join(k for k in types if k != 'int8_nodes')}")  # fmt: skip
        given[key] = _value(str(types[key]), value, name, key)
    try:
        return cls(**given)
    except ValueError as exc:
        raise InputError(f"--recipe {name}: {exc}") from exc


def _value(kind: str, text: str, name: str, key: str) -> Any:
    try:
        if kind == "bool":
            if text not in ("true", "false"):
                raise ValueError(text)
            return text == "true"
        if kind == "int":
            return int(text)
        if "float" in kind:
            return None if text == "none" else float(text)
        return text
    except ValueError:
        raise InputError(f"--recipe {name}: {key}={text!r} is not a valid {kind}") from None


def run(args: argparse.Namespace, kind: Kind, console: Console) -> int:
    """Search, print the table, write the artifact folder and its report (or, with
    --recipe, apply one pass and report its fidelity)."""
    from inferopt.generative.search import search_generator

    if args.recipe:
        return run_recipe(args, kind, console)
    config = config_from(args)
    out = Path(args.out or f"optimized/{Path(str(args.model)).name}")
    with artifact_folder(args.model, kind, console) as source, Progress(console) as progress:
        result = search_generator(source, config, fresh=args.fresh, progress=progress)
        write(result, out)
    wide = Console(width=max(console.width, 150)) if not console.is_terminal else console
    wide.print(table(result))
    chosen = result.chosen
    console.print(f"chose {chosen.describe} at {chosen.threads} thread(s): "
                  f"{chosen.decode_tokens_per_s:.1f} tokens/s; wrote {out}/ "
                  f"(report: {out}/report.html)")  # fmt: skip
    return 0


def run_recipe(args: argparse.Namespace, kind: Kind, console: Console) -> int:
    """Apply one pass to the generator, measure its fidelity against the source with
    intervals, print it, and refuse (exit 2, output removed) an artifact that produces
    non-finite logits."""
    from inferopt.generative.fidelity import measure_fidelity

    pass_ = pass_from(str(args.recipe))
    out = Path(args.out or f"optimized/{Path(str(args.model)).name}")
    with artifact_folder(args.model, kind, console) as source, Progress(console) as progress:
        progress(f"applying {pass_.describe()} ...")
        pass_.apply(source, out)
        progress("measuring fidelity against the source on held-out text ...")
        fid = measure_fidelity(out, source)
    if fid.nonfinite:
        shutil.rmtree(out, ignore_errors=True)
        raise InputError(f"{pass_.describe()}: the result produces {fid.nonfinite} non-finite "
                         "logits on held-out text; nothing written")  # fmt: skip
    p = fid.perplexity_change
    console.print(f"{pass_.describe()}: perplexity {fid.perplexity_change_point:+.2%} "
                  f"[{p.low:+.2%}, {p.high:+.2%}], KL {fid.kl_point:.4f}, same top-1 "
                  f"{fid.same_top1_point:.1%}, greedy agreement "
                  f"{fid.greedy_agreement_point:.1%} (95% intervals in fidelity.json); "
                  f"wrote {out}/")  # fmt: skip
    (out / "fidelity.json").write_text(json.dumps(fid.to_json(), indent=1))
    return 0


def table(result: GeneratorSearchResult) -> Table:
    t = Table("variant", "threads", "decode tok/s", "TTFT 128", "size MB", "perplexity Δ [95%]",
              "KL", "same top-1", "greedy", "budget", title="generator search")  # fmt: skip
    for c in result.candidates:
        mark = " *" if c == result.chosen else ""
        t.add_row(c.variant + mark, str(c.threads), f"{c.decode_tokens_per_s:.1f}",
                  f"{c.ttft_s * 1e3:.0f} ms", f"{c.size_bytes / 1e6:.1f}", *_fidelity(c),
                  c.verdict)  # fmt: skip
    return t


def _fidelity(c: Candidate) -> list[str]:
    f = c.fidelity
    if not f:
        return ["reference", "0", "100%", "100%"]
    p = f["perplexity_change"]
    low, high = (_pct(p.get("low")), _pct(p.get("high")))
    return [f"{_pct(f['perplexity_change_point'])} [{low}, {high}]", _num(f["kl_point"]),
            _pct(f["same_top1_point"], sign=False),
            _pct(f["greedy_agreement_point"], sign=False)]  # fmt: skip


def _pct(value: float | None, *, sign: bool = True) -> str:
    if value is None:
        return "inf"
    return f"{value:+.2%}" if sign else f"{value:.1%}"


def _num(value: float | None) -> str:
    return "inf" if value is None else f"{value:.4f}"


def write(result: GeneratorSearchResult, out: Path) -> None:
    """The chosen variant's artifact folder as `out` (model, tokenizer, genai_config.json),
    with search.json (every candidate, the Pareto set, the hardware) and report.html."""
    chosen = Path(result.chosen.folder)
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(chosen, out, ignore=shutil.ignore_patterns("outcome.json"))
    (out / "search.json").write_text(json.dumps(result.to_json(), indent=1))
    (out / "report.html").write_text(render_html(result), encoding="utf-8")


def render_html(result: GeneratorSearchResult) -> str:
    """A self-contained page: the choice, the Pareto plot, the table of every candidate."""
    from inferopt.report.html import figure_png

    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(x))}</td>" for x in (
            c.variant, c.describe, c.threads, f"{c.decode_tokens_per_s:.1f}",
            f"{c.ttft_s * 1e3:.0f} ms", f"{c.size_bytes / 1e6:.1f} MB", *_fidelity(c),
            c.verdict)) + "</tr>"
        for c in result.candidates
    )  # fmt: skip
    head = "".join(f"<th>{h}</th>" for h in ("variant", "what", "threads", "decode tok/s",
                   "TTFT 128", "size", "perplexity Δ [95%]", "KL", "same top-1", "greedy",
                   "budget"))  # fmt: skip
    hw = result.hardware
    return (
        "<!doctype html><meta charset='utf-8'><title>inferopt generator search</title>"
        f"<h1>Generator search</h1><p>Chose <b>{html.escape(result.chosen.describe)}</b> at "
        f"{result.chosen.threads} thread(s): {result.chosen.decode_tokens_per_s:.1f} tokens/s "
        f"(objective {result.config['objective']}, {result.config['metric']} budget "
        f"{result.config['budget']}). Machine: {html.escape(str(hw.get('cpu_model')))}, "
        f"{hw.get('usable_cores')} cores. Search took {result.seconds:.0f} s.</p>"
        f"{figure_png(plot_pareto(result))}"
        f"<table border=1 cellpadding=4><tr>{head}</tr>{rows}</table>"
    )


def plot_pareto(result: GeneratorSearchResult) -> Any:
    """Decode tokens/s against the perplexity change (95% interval as error bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for c in result.candidates:
        f = c.fidelity
        point = f.get("perplexity_change_point", 0.0) if f else 0.0
        interval = f.get("perplexity_change", {}) if f else {}
        low, high = interval.get("low", point), interval.get("high", point)
        if point is None or low is None or high is None:
            continue  # a non-finite candidate: listed in the table, not plottable
        color = "tab:green" if c.verdict == "within" else "tab:red"
        ax.errorbar(100 * point, c.decode_tokens_per_s, xerr=[[100 * (point - low)],
                    [100 * (high - point)]], fmt="o", color=color, capsize=3)  # fmt: skip
        ax.annotate(f"{c.variant} ×{c.threads}", (100 * point, c.decode_tokens_per_s),
                    fontsize=7, xytext=(4, 4), textcoords="offset points")  # fmt: skip
    if result.config["metric"] == "perplexity":
        ax.axvline(100 * result.config["budget"], color="grey", linestyle="--", label="budget")
        ax.legend()
    ax.set_xlabel("perplexity change vs fp32 (%), 95% interval")
    ax.set_ylabel("decode tokens/s (batch 1)")
    ax.set_title("candidates: green within budget, red over or unresolved")
    return fig
