"""Executors: one interface (base.py), several runtimes (process, docker)."""
