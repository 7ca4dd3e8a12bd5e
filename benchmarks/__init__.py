"""jitrender's benchmark suite: ``python -m benchmarks [--quick]`` (``make bench``).

Every ``benchmarks/bench_*.py`` exposing ``run(quick: bool) -> dict`` is one benchmark; the
dict carries a ``table`` (printed) and the figures (written as JSON to ``benchmarks/results/``).
"""
