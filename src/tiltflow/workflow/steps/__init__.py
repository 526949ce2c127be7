"""The built-in steps; importing this package registers them."""

from tiltflow.workflow.steps import (  # noqa: F401
    align, ctf, import_alignment, import_movies, import_tilt_series, motion_ctf, reconstruct, xray_erase,
)
