"""The control API: validation and store operations behind the HTTP routes."""
