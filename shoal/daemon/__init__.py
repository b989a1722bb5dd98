"""`shoal daemon`: one per machine. Always runs the agent; on managers the manager too.

This package is the composition root: the only place that sees the API, the manager
and the agent together and wires the agent to the dispatcher.
"""
