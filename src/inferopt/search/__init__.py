"""Evaluating and choosing candidate models."""
