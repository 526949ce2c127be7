"""tiltflow.distributed."""
