"""tiltflow.testing."""
