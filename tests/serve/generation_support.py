"""What the generation server tests share (imported by them; pytest does not collect it): the
zoo's tiny-llama as a decoder artifact, repositories holding it, a slowed decode step, and
reading a server's Prometheus samples.

The artifact is exported once per machine into the test cache (a few seconds), keyed by the
zoo folder it comes from, and copied into each repository (a symlink out of the repository
is refused by the layout). `endless` is the same artifact with its EOS ids replaced by the
padding token, which the model never produces: every generation runs to max_tokens, so
tests can choose how long a generation lasts.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from inferopt.cache import cache_dir
from inferopt.generative.slots import SlotPool

CONTEXT = 512  # the artifact's context cap: small, so that "over the context" is cheap
PAD_ID = 0


def tiny_artifact() -> Path:
    """The zoo's tiny-llama exported with a KV cache of CONTEXT tokens (cached)."""
    pytest.importorskip("transformers")
    from inferopt import zoo
    from inferopt.generative.export import export_causal_lm

    source = zoo.generator_folder("tiny-llama")
    folder = cache_dir("serve-generation") / f"{source.name}-ctx{CONTEXT}"
    if not (folder / "genai_config.json").is_file():
        with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
            export_causal_lm(source, Path(tmp) / "artifact", max_context=CONTEXT)
            shutil.rmtree(folder, ignore_errors=True)
            (Path(tmp) / "artifact").rename(folder)  # whole or absent, for parallel runs
    return folder


def add_generator(repo: Path, name: str, *, endless: bool = False, settings: str = "") -> Path:
    """Copy the artifact to repo/name/1/ (EOS disabled when `endless`), with `settings` as the
    model's serve.toml; the version folder."""
    version = repo / name / "1"
    shutil.copytree(tiny_artifact(), version)
    if endless:
        genai = json.loads((version / "genai_config.json").read_text())
        genai["model"]["eos_token_id"] = [PAD_ID]
        (version / "genai_config.json").write_text(json.dumps(genai))
        tokenizer = json.loads((version / "tokenizer_config.json").read_text())
        tokenizer["eos_token"] = "<pad>"
        (version / "tokenizer_config.json").write_text(json.dumps(tokenizer))
    if settings:
        (repo / name / "serve.toml").write_text(settings)
    return version


@contextmanager
def slowed_decode(seconds: float) -> Iterator[None]:
    """Every batched decode step takes at least `seconds` more: generations last long
    enough for a test to act while they run (the tiny model decodes a token in ~0.2 ms)."""
    original = SlotPool.decode

    def slow(self: SlotPool, tokens: Any) -> Any:
        time.sleep(seconds)
        return original(self, tokens)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SlotPool, "decode", slow)
        yield


def sample(url: str, name: str, **labels: str) -> float:
    """One sample of the server's /metrics with exactly these labels (0 when absent)."""
    text = httpx.get(f"http://{url}/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name + "{"):
            continue
        series, value = line.rsplit(" ", 1)
        inside = series[len(name) + 1 : -1]
        pairs = dict(part.split("=", 1) for part in inside.split(",") if part)
        if {k: v.strip('"') for k, v in pairs.items()} == labels:
            return float(value)
    return 0.0


def wait_for(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met within the time bound")
        time.sleep(0.01)
