"""The built-in steps; importing this package registers them."""

from tiltflow.workflow.steps import (  # noqa: F401
    align,
    assign_alignment,
    ctf,
    dose_filter,
    erase_beads,
    import_alignment,
    import_movies,
    import_tilt_series,
    motion_ctf,
    normalize,
    reconstruct,
    xray_erase,
)
