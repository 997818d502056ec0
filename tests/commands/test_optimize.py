"""`inferopt optimize` as a user runs it with its output piped (a log, CI, `make demo > log`):
plain progress lines, each with the time since the start, flushed as they come; the
before/after table; and last the path of the HTML report."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "fixtures"))
from damage import pooled_encoder
from rich.console import Console

from inferopt.cli import main
from inferopt.commands.optimize import ProgressLog
from inferopt.search import auto
from inferopt.search.select import choose

STAMP = re.compile(r"^\[\s*\d+s\] ")


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A tiny text encoder (ids and attention mask -> mean of the real tokens' embeddings)
    and 200 sentences of 5 to 24 tokens, stored right-padded (mask 0) as a user's .npz is."""
    folder = tmp_path_factory.mktemp("encoder")
    pooled_encoder().save(folder / "enc.onnx")
    rng = np.random.default_rng(0)
    lengths = 5 + np.arange(200) % 20
    ids = rng.integers(1, 50, (200, 24)).astype(np.int64)
    mask = (np.arange(24)[None, :] < lengths[:, None]).astype(np.int64)
    np.savez(folder / "data.npz", input_ids=ids * mask, attention_mask=mask)
    return str(folder / "enc.onnx"), str(folder / "data.npz")


@pytest.mark.slow
def test_piped_output_is_plain_lines_that_arrive_as_the_search_runs(
    encoder: tuple[str, str], tmp_path: Path
) -> None:
    model, data = encoder
    out = tmp_path / "out"
    command = [
        str(Path(sys.executable).with_name("inferopt")), "optimize", model, "--data", data,
        "--out", str(out), "--no-training", "--time-budget", "120",
        "--objective", "throughput", "--throughput-shape", "8x32",
    ]  # fmt: skip
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as p:
        assert p.stdout is not None
        first = p.stdout.readline()
        # Flushed at once, not held until the end: the search has not finished yet.
        still_running = p.poll() is None
        rest, err = p.communicate(timeout=300)
    assert p.returncode in (0, 1), err
    assert still_running and first.startswith("[  0s] loading ") and model in first
    lines = [first.rstrip("\n"), *rest.splitlines()]
    assert "\x1b[" not in "".join(lines)  # no colours, spinners or cursor moves
    progress = [line for line in lines if STAMP.match(line)]
    assert progress[1].split("] ", 1)[1].startswith("baseline: ")
    assert "40 held-out samples" in progress[1]
    starts = [line for line in progress if "] candidate " in line]
    done = [line for line in progress if "] done " in line]
    assert starts and len(done) == len(starts)  # one finished line per candidate
    for line in done:
        assert re.search(r"drop \d\.\d{4} \[95% up \d\.\d{4}\]", line)
        assert "at batch 8 x 32 tokens (probe)" in line
        assert re.search(r": (within budget|over budget|screened out|failed)", line)
    # Each candidate's finished line comes after its start line and before the next start.
    order = [("start" if "] candidate " in line else "done") for line in starts + done]
    assert order.count("start") == order.count("done")
    positions = [lines.index(line) for line in starts]
    finished = [lines.index(line) for line in done]
    assert all(s < d for s, d in zip(positions, finished, strict=True))
    assert any("] confirmed " in line for line in progress)
    seconds = [int(STAMP.match(line).group(0).strip("[] s")) for line in progress]  # type: ignore[union-attr]
    assert seconds == sorted(seconds)
    assert lines[-1] == f"report: {out / 'report.html'}"
    assert (out / "report.html").is_file()


@pytest.mark.slow
def test_both_speeds_are_reported_whichever_objective(
    encoder: tuple[str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The chosen model's batch-1 latency and its throughput at the stated shape, in the
    table, report.json and inferopt.json; searched for latency."""
    # This encoder runs in microseconds: whether a candidate beats the original is noise, so
    # the original is left out of the choice here (what is reported for a chosen model is
    # what this test is about).
    monkeypatch.setattr(auto, "choose_against_original", choose)
    model, data = encoder
    out = tmp_path / "out"
    code = main(["optimize", model, "--data", data, "--out", str(out), "--no-training",
                 "--time-budget", "120", "--throughput-shape", "16x64"])  # fmt: skip
    printed = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    manifest = json.loads((out / "inferopt.json").read_text())
    assert code == 0 and manifest["status"] == "complete"
    assert "latency, batch 1" in printed and "throughput, batch 16 x 64" in printed
    for record in (report, manifest):
        both = record["objectives"]
        assert set(both) == {"latency", "throughput"}
        assert both["latency"]["timed_at"] == "batch 1"
        assert both["throughput"]["timed_at"] == "batch 16 x 64 tokens"
        assert both["throughput"]["candidate_samples_per_s"] > 0
        assert "padding='max_length'" in both["throughput"]["inputs"]
        assert all(v["speedup"] > 0 and v["rounds"] >= 5 for v in both.values())
    page = (out / "report.html").read_text()
    assert "at batch 1; " in page and "at batch 16 x 64 tokens against the original" in page
    chosen = next(c for c in report["candidates"] if c["text"] == report["chosen"])
    assert report["objectives"]["latency"]["speedup"] in (
        chosen["full"]["speedup"],
        (report["threads"]["against_baseline"] or {}).get("speedup"),
    )


@pytest.mark.parametrize("shape", ["32x", "x128", "0x128", "32x128x2", "big"])
def test_a_bad_throughput_shape_is_one_line_and_exit_2(
    shape: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code = main(["optimize", "digits-mlp", "--out", str(tmp_path / "o"),
                 "--throughput-shape", shape])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "--throughput-shape" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_progress_is_plain_lines_off_a_terminal_and_rich_in_one() -> None:
    plain = io.StringIO()
    log = ProgressLog(Console(file=plain))
    with log.live("optimizing x"):
        log("loading x ...")
        log("[bold]not markup[/]")
    assert plain.getvalue() == "[  0s] loading x ...\n[  0s] [bold]not markup[/]\n"
    terminal = io.StringIO()
    log = ProgressLog(Console(file=terminal, force_terminal=True, width=100))
    with log.live("optimizing x"):
        assert log.status is not None  # the spinner shows the current step
        log("loading x ...")
    assert "loading x ..." in terminal.getvalue() and "\x1b[" in terminal.getvalue()
    assert log.status is None


def test_a_budget_spent_before_any_candidate_says_so(
    encoder: tuple[str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(auto.Clock, "can_afford", lambda self, estimate_s: False)
    model, data = encoder
    out = tmp_path / "out"
    code = main(["optimize", model, "--data", data, "--out", str(out), "--no-training", "--fresh"])
    printed = capsys.readouterr().out
    assert code == 1 and "no candidate was tried" in printed and "--time-budget" in printed
    assert printed.rstrip().splitlines()[-1] == f"report: {out / 'report.html'}"
