"""Extreme multi-label classification end to end: data, model, metrics and a trainer on the fused losses."""
