"""The dispatcher: agent sessions, heartbeats, assignments, status batches."""
