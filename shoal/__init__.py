"""shoal: a container orchestrator with the semantics of Docker Swarm mode."""

__version__ = "0.1.0"
