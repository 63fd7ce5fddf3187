"""``python -m unlearnkit.metrics`` prints the metrics page (docs/metrics.md)."""

from unlearnkit.metrics import markdown

print(markdown(), end="")
