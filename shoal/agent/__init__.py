"""The agent: runs on every node, executes the tasks the dispatcher assigns to it."""
