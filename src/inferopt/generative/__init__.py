"""Generative models: causal language models exported with an explicit KV cache, checked
against PyTorch, generated from, quantized weight-only, searched and profiled."""
