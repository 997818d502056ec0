"""SIGTERM on a server with a generator: running streams finish (to max_tokens, then [DONE])
before the process exits 0."""

from __future__ import annotations

import json
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from generation_support import add_generator
from test_drain import ServerProcess, refused

STREAMS, TOKENS = 8, 400


def _stream(url: str, done: list[dict[str, object]], started: threading.Event) -> None:
    body = {
        "model": "tiny", "prompt": "The function returns", "max_tokens": TOKENS,
        "temperature": 0, "stream": True, "stream_options": {"include_usage": True},
    }  # fmt: skip
    events: list[str] = []
    with httpx.stream("POST", f"http://{url}/v1/completions", json=body, timeout=120) as answer:
        for line in answer.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
                started.set()
    chunks = [json.loads(e) for e in events if e != "[DONE]"]
    finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    usage = [c["usage"] for c in chunks if c.get("usage")]
    done.append({"last": events[-1] if events else None, "finish": finish[-1] if finish else None,
                 "tokens": usage[-1]["completion_tokens"] if usage else 0})  # fmt: skip


def test_sigterm_lets_running_streams_finish(tmp_path: Path, poll: Callable) -> None:
    add_generator(tmp_path, "tiny", endless=True)  # EOS never comes: each runs TOKENS long
    server = ServerProcess(str(tmp_path), "--http-port", "0", "--no-grpc",
                           "--max-batch-size", str(STREAMS))  # fmt: skip
    try:
        poll(lambda: any("listening http=" in line for line in server.lines), timeout=60)
        line = next(line for line in server.lines if "listening http=" in line)
        url = line.split("http=", 1)[1].split()[0]
        poll(lambda: httpx.get(f"http://{url}/v2/models/tiny/ready").status_code == 200,
             timeout=60)  # fmt: skip
        done: list[dict[str, object]] = []
        # One event per stream: the signal must come after every stream has its first
        # chunk, or a slow thread's connection is (rightly) refused by the draining server.
        started = [threading.Event() for _ in range(STREAMS)]
        threads = [threading.Thread(target=_stream, args=(url, done, event))
                   for event in started]  # fmt: skip
        for thread in threads:
            thread.start()
        assert all(event.wait(60) for event in started)
        running_at_signal = STREAMS - len(done)
        server.proc.send_signal(signal.SIGTERM)
        poll(lambda: refused(url), timeout=30)  # no new connections while draining
        for thread in threads:
            thread.join(120)
        assert running_at_signal > 0  # the signal came while streams were running
        assert done == [{"last": "[DONE]", "finish": "length", "tokens": TOKENS}] * STREAMS
        assert server.proc.wait(60) == 0
        assert "SIGTERM received" in "".join(server.lines)
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait(10)
