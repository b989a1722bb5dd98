"""The allocator: network resources for services and tasks."""
