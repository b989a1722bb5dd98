"""`shoal stack`: Compose files (format 3.x) deployed as stacks, as `docker stack` does.

compose.py reads and checks the file, convert.py turns it into the Engine API's
bodies, deploy.py sends them; commands.py is the typer front."""
