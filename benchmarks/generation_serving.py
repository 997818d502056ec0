"""Serving generation: what continuous batching gains over static batching and one request at
a time, and how the server holds an open-loop load past its capacity.

Per model (tiny-llama, smollm2-135m; the zoo's fp32 artifacts):
1. Engine (in process, no HTTP): the Scheduler under closed loops of 1 and 8 concurrent
   streams, with policies continuous (8 slots), static (8 slots, a batch runs to its end)
   and one at a time (1 slot). Same held-out prompts, greedy: every row generates the same
   tokens (batch invariance), so tokens/s compare like for like. Rows interleaved, repeated,
   medians.
2. HTTP: `inferopt serve` with the OpenAI endpoints, loaded by `inferopt bench --api
   openai-completions` (closed loop 1 and 8).
3. Overload: an open loop at 3x the measured 8-stream capacity for `--overload-s` seconds:
   statuses, how fast refusals come, server memory before and after, and TTFT of the streams
   it accepted.
4. Prefix caching (in process): requests sharing a system prompt of SYSTEM_TOKENS tokens,
   each with its own QUESTION_TOKENS-token question, one at a time and 8 at once, with the
   prefix cache off and on.
Rows 1-3 run with the prefix cache off: their repeated prompts would otherwise hit it.

    python benchmarks/generation_serving.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).parent))

from common import save, table

from inferopt import zoo
from inferopt.generative.export import export_causal_lm
from inferopt.generative.generate import GenerationConfig, Generator
from inferopt.loadgen.prompts import PromptLength, make_prompts
from inferopt.loadgen.run import Load
from inferopt.loadgen.stream_stats import Objectives
from inferopt.loadgen.streams import StreamConfig, StreamResult, bench_streams
from inferopt.serve.scheduler import Policy, Scheduler

MODELS = ("tiny-llama", "smollm2-135m")
PROMPT_TOKENS = 64
MAX_TOKENS = 64
SLOTS = 8
# The load generator shares the machine's 2 cores with the server. Its HTTP/1.1 client keeps
# to the schedule up to 4000 requests/s when most are refused (measured against tiny-llama
# with a small queue), so this cap is a safety bound, not a limit reached here.
MAX_OPEN_RATE = 1000.0
TTFT_TARGET_MS = 1000.0  # the objective accepted streams are judged on under overload
MAX_QUEUE_WAIT_MS = 500.0  # the server's admission limit: half the TTFT target for queueing
SYSTEM_TOKENS, QUESTION_TOKENS = 256, 32  # section 4's shared system prompt and questions
START = time.perf_counter()


def say(message: str) -> None:
    print(f"[{time.perf_counter() - START:7.0f}s] {message}", flush=True)


# -- 1. engine ---------------------------------------------------------------------------


async def _closed_loop(
    scheduler: Scheduler, prompts: list[list[int]], concurrency: int, max_tokens: int = MAX_TOKENS
) -> dict[str, float]:
    """Every prompt once, `concurrency` at a time: output tokens/s, and medians of TTFT and
    of per-stream TPOT."""
    queue = list(prompts)
    ttfts: list[float] = []
    tpots: list[float] = []
    tokens = 0
    config = GenerationConfig(max_new_tokens=max_tokens, ignore_eos=True)

    async def client() -> None:
        nonlocal tokens
        while queue:
            sent = time.perf_counter()
            stream = scheduler.submit(queue.pop(), config)
            first = None
            async for _ in stream:
                first = first or time.perf_counter()
            done = time.perf_counter()
            assert stream.finish is not None and first is not None
            n = stream.finish.completion_tokens
            tokens += n
            ttfts.append(first - sent)
            if n > 1:
                tpots.append((done - first) / (n - 1))

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    return {"tokens_per_s": tokens / wall, "tpot_ms": 1e3 * statistics.median(tpots),
            "ttft_ms": 1e3 * statistics.median(ttfts), "tokens": tokens,
            "wall_s": wall}  # fmt: skip


ENGINE_ROWS: tuple[tuple[str, Policy, int, int], ...] = (
    ("continuous, 1 stream", "continuous", SLOTS, 1),
    ("continuous, 8 streams", "continuous", SLOTS, 8),
    ("static batches of 8, 8 streams", "static", SLOTS, 8),
    ("one at a time (1 slot), 8 streams", "continuous", 1, 8),
)


def engine(generator: Generator, prompts: list[list[int]], rounds: int) -> dict[str, Any]:
    schedulers = {
        (policy, slots): Scheduler(
            generator, slots=slots, policy=policy, max_waiting=64, prefix_cache_tokens=0
        )
        for _, policy, slots, _ in ENGINE_ROWS
    }
    runs: dict[str, list[dict[str, float]]] = {row[0]: [] for row in ENGINE_ROWS}
    try:
        for r in range(rounds):
            for name, policy, slots, concurrency in ENGINE_ROWS:
                result = asyncio.run(_closed_loop(schedulers[policy, slots], prompts, concurrency))
                runs[name].append(result)
            say(f"  engine round {r + 1}/{rounds}")
    finally:
        for scheduler in schedulers.values():
            scheduler.close()
    return {name: _medians(found) for name, found in runs.items()}


def _medians(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


# -- 4. prefix caching -------------------------------------------------------------------


def prefix_caching(generator: Generator, rounds: int) -> dict[str, dict[str, float]]:
    """Section 4: 16 requests of one system prompt and 16 questions, cache off and on."""
    texts = make_prompts(16, PromptLength(QUESTION_TOKENS), generator.tokenizer,
                         shared_prefix=SYSTEM_TOKENS).texts  # fmt: skip
    prompts = [generator.prompt_ids(text) for text in texts]
    schedulers = {cache: Scheduler(generator, slots=SLOTS, max_waiting=64,
                                   prefix_cache_tokens=cache) for cache in (0, 4096)}  # fmt: skip
    runs: dict[str, list[dict[str, float]]] = {}
    try:
        for _ in range(rounds):
            for cache, scheduler in schedulers.items():
                for concurrency in (1, SLOTS):
                    name = f"cache {'on' if cache else 'off'}, {concurrency} at once"
                    result = asyncio.run(
                        _closed_loop(scheduler, prompts, concurrency, QUESTION_TOKENS)
                    )
                    runs.setdefault(name, []).append(result)
    finally:
        for scheduler in schedulers.values():
            scheduler.close()
    return {name: _medians(found) for name, found in runs.items()}


# -- 2. and 3. over HTTP -----------------------------------------------------------------


@contextlib.contextmanager
def served(folder: Path, name: str, work: Path) -> Iterator[tuple[str, int]]:
    """`inferopt serve` in its own process on a free loopback port, the artifact as model
    `name` version 1, 8 slots, at most 8 requests waiting and none predicted to wait past
    MAX_QUEUE_WAIT_MS: (host:port, pid)."""
    repo = work / "repo"
    shutil.rmtree(repo, ignore_errors=True)
    shutil.copytree(folder, repo / name / "1")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cli = Path(sys.executable).with_name("inferopt")
    process = subprocess.Popen(
        [str(cli), "serve", str(repo), "--host", "127.0.0.1", "--http-port", str(port),
         "--no-grpc", "--max-batch-size", str(SLOTS), "--max-queue-size", str(2 * SLOTS),
         "--max-queue-wait-ms", str(MAX_QUEUE_WAIT_MS), "--prefix-cache-tokens", "0",
         "--log-level", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    url = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://{url}/v2/models/{name}/ready", timeout=1).status_code == 200:
                    break
            if process.poll() is not None:
                raise RuntimeError(
                    f"the server exited: {process.stderr.read() if process.stderr else ''}"
                )
            time.sleep(0.2)
        yield url, process.pid
    finally:
        process.terminate()
        process.wait(60)


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return math.nan


def _stream_run(url: str, name: str, folder: Path, load: Load, requests: int,
                duration_s: float, ttft_slo_ms: float | None = None) -> StreamResult:  # fmt: skip
    config = StreamConfig(
        url, name, "openai-completions", load=load, prompt_length=PromptLength(PROMPT_TOKENS),
        max_tokens=MAX_TOKENS, max_requests=requests, duration_s=duration_s, timeout_s=120,
        objectives=Objectives(ttft_slo_ms, None), tokenizer=str(folder), ignore_eos=True,
    )  # fmt: skip
    return asyncio.run(bench_streams(config))


def http(folder: Path, name: str, work: Path, count: int, overload_s: float) -> dict[str, Any]:
    """Closed loops of 1 and 8 streams, then an open loop at 3x the 8-stream capacity."""
    found: dict[str, Any] = {}
    with served(folder, name, work) as (url, pid):
        _stream_run(url, name, folder, Load("closed", 2), 4, 60)  # warm the server up
        for streams in (1, 8):
            result = _stream_run(url, name, folder, Load("closed", streams), count, 600)
            found[f"{streams} streams"] = _flat(result)
        capacity = found["8 streams"]["requests_per_s"]
        rate = min(3 * capacity, MAX_OPEN_RATE)
        slo = TTFT_TARGET_MS
        rss_before = _rss_mib(pid)
        peak = [rss_before]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.25):
                peak.append(_rss_mib(pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        result = _stream_run(url, name, folder, Load("open", rate, "poisson"),
                             int(rate * overload_s) + 1, overload_s, slo)  # fmt: skip
        stop.set()
        sampler.join()
        refused = [t.e2e for t in result.timings if t.outcome == "429"]
        other = {k: v for k, v in result.summary.by_status.items() if k != "429"}
        found["overload"] = {
            "rate_per_s": rate, "capacity_per_s": capacity, "seconds": overload_s,
            "summary": _flat(result), "refused": len(refused),
            "refusal_ms_p50": 1e3 * statistics.median(refused) if refused else math.nan,
            "refusal_ms_p99": 1e3 * float(sorted(refused)[int(0.99 * (len(refused) - 1))])
            if refused else math.nan,
            "other_errors": sum(other.values())
            + sum(v for k, v in result.summary.by_kind.items() if k != "dropped"),
            "dropped_by_client": result.summary.by_kind.get("dropped", 0),
            "rss_mib_before": rss_before, "rss_mib_after": _rss_mib(pid),
            "rss_mib_peak": max(peak), "ttft_slo_ms": slo,
        }  # fmt: skip
    return found


def _flat(result: StreamResult) -> dict[str, Any]:
    s = result.summary
    return {
        "requests": s.requests, "ok": s.ok, "good": s.good,
        "requests_per_s": s.requests_per_s, "output_tokens_per_s": s.output_tokens_per_s,
        "ttft_p50_ms": s.ttft_ms["p50"], "ttft_p90_ms": s.ttft_ms["p90"],
        "ttft_p99_ms": s.ttft_ms["p99"], "tpot_p50_ms": s.tpot_ms["p50"],
        "itl_p99_ms": s.itl_ms["p99"], "by_status": s.by_status, "by_kind": s.by_kind,
    }  # fmt: skip


def _artifact(name: str, work: Path) -> Path:
    return export_causal_lm(zoo.generator_folder(name), work / name)


def _http_tables(name: str, f: dict[str, Any]) -> list[dict[str, Any]]:
    one, eight = f["1 streams"], f["8 streams"]
    rows = [[k, f"{v['output_tokens_per_s']:.0f}",
             f"{v['output_tokens_per_s'] / one['output_tokens_per_s']:.2f}x",
             f"{v['ttft_p50_ms']:.1f}", f"{v['tpot_p50_ms']:.2f}",
             f"{v['tpot_p50_ms'] / one['tpot_p50_ms']:.2f}x", f"{v['itl_p99_ms']:.2f}"]
            for k, v in (("1 stream", one), ("8 streams", eight))]  # fmt: skip
    o = f["overload"]
    s = o["summary"]
    accepted = s["ok"]
    return [
        table(f"{name}: `inferopt serve`, OpenAI completions streamed, closed loop",
              ["load", "output tok/s", "vs 1 stream", "TTFT p50 ms", "TPOT p50 ms",
               "TPOT vs 1 stream", "ITL p99 ms"], rows,
              "Measured by `inferopt bench --api openai-completions --ignore-eos` "
              f"(loadgen.streams) on loopback; {PROMPT_TOKENS}-token held-out prompts, "
              f"{MAX_TOKENS} output tokens each, {SLOTS} KV-cache slots."),
        table(f"{name}: open loop at 3x capacity for {o['seconds']:.0f} s",
              ["figure", "value"],
              [["rate sent (Poisson)", f"{o['rate_per_s']:.1f}/s "
                f"({o['rate_per_s'] / o['capacity_per_s']:.1f} x the {o['capacity_per_s']:.2f}/s "
                f"served at 8 streams; capped at {MAX_OPEN_RATE:.0f}/s)"],
               ["requests made / accepted / refused 429", f"{s['requests']} / {accepted} / "
                f"{o['refused']}"],
               ["errors other than 429 (server)", o["other_errors"]],
               ["not sent: client past 1024 outstanding", o["dropped_by_client"]],
               ["429 answered in (p50 / p99)",
                f"{o['refusal_ms_p50']:.1f} / {o['refusal_ms_p99']:.1f} ms"],
               ["server RSS before / peak / after", f"{o['rss_mib_before']:.0f} / "
                f"{o['rss_mib_peak']:.0f} / {o['rss_mib_after']:.0f} MiB"],
               ["accepted: TTFT p50 / p90 / p99", f"{s['ttft_p50_ms']:.0f} / "
                f"{s['ttft_p90_ms']:.0f} / {s['ttft_p99_ms']:.0f} ms"],
               ["accepted within the TTFT target", f"{s['good']} of {accepted} "
                f"(target {o['ttft_slo_ms']:.0f} ms)"]],
              f"The server ({SLOTS} slots, --max-queue-size {2 * SLOTS}, --max-queue-wait-ms "
              f"{MAX_QUEUE_WAIT_MS:.0f}) refuses at once what would wait longer for a slot; "
              "refusal time is from the scheduled send to the 429."),
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 round, 8 prompts")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--overload-s", type=float, default=30.0, help="open loop at 3x")
    args = parser.parse_args()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request
    rounds, count = (1, 8) if args.quick else (3, 16)
    tables, figures = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            say(f"{name}: export")
            folder = _artifact(name, Path(tmp))
            generator = Generator(folder, max_context=512, last_logits=True)  # as served
            texts = make_prompts(count, PromptLength(PROMPT_TOKENS), generator.tokenizer)
            prompts = [generator.prompt_ids(t) for t in texts.texts]
            say(f"{name}: engine, {rounds} rounds of {len(ENGINE_ROWS)} rows")
            found = engine(generator, prompts, rounds)
            figures[name] = {"engine": found}
            single = found[ENGINE_ROWS[0][0]]
            tables.append(table(
                f"{name}: the scheduler in process, {count} held-out prompts of "
                f"{PROMPT_TOKENS} tokens, greedy, up to {MAX_TOKENS} new tokens",
                ["row", "output tok/s", "vs 1 stream", "TPOT ms (median)", "TPOT vs 1 stream"],
                [[row, f"{f['tokens_per_s']:.0f}",
                  f"{f['tokens_per_s'] / single['tokens_per_s']:.2f}x",
                  f"{f['tpot_ms']:.2f}", f"{f['tpot_ms'] / single['tpot_ms']:.2f}x"]
                 for row, f in found.items()],
                f"Medians of {rounds} rounds, rows interleaved within each round. Every row "
                "generates the same tokens (greedy, ignore_eos, batch-invariant), "
                f"{int(single['tokens'])} in all.",
            ))  # fmt: skip
            say(f"{name}: prefix caching")
            cached = prefix_caching(generator, rounds)
            figures[name]["prefix_caching"] = cached
            speed = {row: f["tokens_per_s"] / cached[row.replace("cache on", "cache off")][
                "tokens_per_s"] for row, f in cached.items()}  # fmt: skip
            tables.append(table(
                f"{name}: prefix caching, a {SYSTEM_TOKENS}-token system prompt shared by 16 "
                f"requests with their own {QUESTION_TOKENS}-token questions",
                ["row", "TTFT ms (median)", "output tok/s", "tok/s vs cache off"],
                [[row, f"{f['ttft_ms']:.1f}", f"{f['tokens_per_s']:.0f}",
                  f"{speed[row]:.2f}x"]
                 for row, f in cached.items()],
                f"In process, {SLOTS} slots, {QUESTION_TOKENS} output tokens each (ignore_eos); "
                f"medians of {rounds} rounds. With the cache on, a request reuses the system "
                "prompt's whole 64-token blocks and prefills the rest; its tokens are the "
                "same as with it off.",
            ))  # fmt: skip
            say(f"{name}: over HTTP")
            served_figures = http(folder, name, Path(tmp), count, args.overload_s)
            figures[name]["http"] = served_figures
            tables += _http_tables(name, served_figures)
    path = save("generation_serving", {
        "command": "python benchmarks/generation_serving.py" + (" --quick" if args.quick else ""),
        "figures": figures, "tables": tables, "load_average_after": list(os.getloadavg()),
    })  # fmt: skip
    say(f"wrote {path}")


if __name__ == "__main__":
    main()
