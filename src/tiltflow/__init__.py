"""tiltflow: cryo-ET tilt series from raw movies to curated, aligned, reconstructed tilt series."""

__version__ = "0.1.0"
