import base64
import json
import math
import re
from pathlib import Path

from inferopt.loadgen.client import Target
from inferopt.loadgen.metrics import ServerTimes
from inferopt.loadgen.report import (
    failure,
    render_html,
    table,
    to_json,
    warning,
    write_html,
    write_json,
)
from inferopt.loadgen.run import Load, Point, RunConfig
from inferopt.loadgen.stats import Sample, Tally, summarize
from inferopt.loadgen.sweep import BenchResult


def result() -> BenchResult:
    config = RunConfig(slo_ms=25.0)
    points = []
    for rate, latency_ms in ((50.0, 10.0), (100.0, 30.0)):
        samples = [Sample(i / rate, latency_ms / 1000, "ok") for i in range(int(rate))]
        samples += [Sample(0.5, 0.001, "429")]
        summary = summarize(samples, 1.0, config.slo_ms)
        server = ServerTimes(100, 1.5, 50, 4.0, 2.0) if rate == 50 else None
        points.append(Point(Load("open", rate), summary, [summary], False, 0.3, server, samples))
    return BenchResult(Target("127.0.0.1:1", "m"), config, "random", points, "every load ran")


def test_json_has_the_documented_fields(tmp_path: Path) -> None:
    path = write_json(result(), tmp_path / "r.json")
    doc = json.loads(path.read_text())
    assert doc["schema"] == "inferopt-bench/1"
    assert doc["config"]["slo_ms"] == 25.0
    first, second = doc["points"]
    assert first["throughput_rps"] == 50.0 and first["goodput_rps"] == 50.0
    assert second["goodput_rps"] == 0.0  # 30 ms answers miss a 25 ms SLO
    assert first["outcomes"]["429"] == 1 and first["requests"] == 51
    assert set(first["latency_ms"]) == {"p50", "p90", "p99", "p99.9", "mean"}
    assert first["server"]["batch_size"] == 2.0 and second["server"] is None
    assert first["windows"][0]["throughput_rps"] == 50.0
    assert math.isclose(first["generator_cpu"], 0.3)


def test_html_embeds_both_plots_and_the_record(tmp_path: Path) -> None:
    page = write_html(result(), tmp_path / "r.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 2
    assert all(base64.b64decode(i).startswith(b"\x89PNG") for i in images)
    assert "Latency vs load" in page and "Goodput vs load" in page
    assert '"schema":"inferopt-bench/1"' in page


def test_the_table_has_a_row_per_level() -> None:
    assert table(result()).row_count == 2
    assert to_json(result())["stopped"] == "every load ran"
    assert "<td>100/s</td>" in render_html(result())


def tally(**counts: int) -> Tally:
    """Answers by status (a keyword can't start with a digit: _400 is status 400)."""
    t = Tally()
    for key, count in counts.items():
        status = key.lstrip("_")
        for _ in range(count):
            t.add(status, None if status == "ok" else f"message of {status}")
    return t


def test_nothing_succeeded_is_one_line_with_the_top_status_and_message() -> None:
    assert failure(tally(_400=30, _503=2)) == (
        "0 of 32 requests succeeded: 400 (30 of them) 'message of 400'"
    )
    assert failure(tally(_400=3)) == "0 of 3 requests succeeded: 400 'message of 400'"
    assert failure(Tally()) == "no request was answered during the run"
    assert failure(tally(ok=1, _400=99)) is None


def test_most_requests_failing_is_a_warning_and_half_is_not() -> None:
    assert warning(tally(ok=3, _400=7)) == (
        "7 of 10 requests failed (70%); most often 400 'message of 400'"
    )
    assert warning(tally(ok=5, _400=5)) is None
    assert warning(tally(_400=5)) is None  # that is a failure, not a warning


def test_json_and_html_carry_the_counts_and_what_went_wrong() -> None:
    r = result()
    r.tally, r.notes = tally(ok=1, _400=3), ["integer inputs are random 0..99"]
    doc = to_json(r)
    assert doc["answers"] == {
        "total": 4, "ok": 1, "failed": 3, "by_status": {"400": 3, "ok": 1},
        "messages": {"400": "message of 400"},
    }  # fmt: skip
    assert doc["notes"] == ["integer inputs are random 0..99"]
    page = render_html(r)
    assert "3 of 4 requests failed (75%)" in page and "random 0..99" in page
