"""tiltflow.cli."""
