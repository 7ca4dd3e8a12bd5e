"""jitrender: just-in-time dependency fetching and exactly-once outputs for render nodes."""

__version__ = "0.1.0"
