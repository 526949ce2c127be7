"""tiltflow.workflow.steps."""
