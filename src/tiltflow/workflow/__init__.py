"""tiltflow.workflow."""
