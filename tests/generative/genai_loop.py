"""ONNX Runtime GenAI's own greedy search over an artifact folder: the reference our Generator's
greedy tokens are compared with."""

from __future__ import annotations

from pathlib import Path


def og_greedy(folder: Path, prompt_ids: list[int], new_tokens: int) -> list[int]:
    """Token ids ORT GenAI generates greedily after `prompt_ids` (EOS included if reached)."""
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt_ids) + new_tokens, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(prompt_ids)
    ids: list[int] = []
    while not generator.is_done():
        generator.generate_next_token()
        ids.append(int(generator.get_next_tokens()[0]))
    return ids
