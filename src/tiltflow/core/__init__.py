"""Pure functions on tensors: no files, no prints, no project. The device follows the input.

The public API of the core is the names in ``__all__``: each has a numpydoc docstring with one
runnable example (run as a doctest by ``make test``). Other module-level functions are building
blocks of these and may change.
"""

# --- motion, X-rays, dose, normalization, reconstruction (section A) -------------------------
_SECTION_A: list[str] = []

# --- alignment and CTF (section B) -----------------------------------------------------------
_SECTION_B: list[str] = []

__all__ = [*_SECTION_A, *_SECTION_B]
