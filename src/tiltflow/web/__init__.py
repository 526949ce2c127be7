"""tiltflow.web."""
