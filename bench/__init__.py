"""Benchmarks of shoal against the figures Swarm mode reached on the same machine.

Each one is a script (`.venv/bin/python bench/<name>.py`) that starts its own daemon in
a temporary directory, measures one thing, prints its figure and cleans up after itself.
"""
