"""Runnable examples; run the demo with ``python -m examples.demo`` (``make demo``)."""
