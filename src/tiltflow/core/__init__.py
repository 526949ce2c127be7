"""Pure functions on tensors: no files, no prints, no project. The device follows the input."""
