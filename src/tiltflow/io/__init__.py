"""Readers and writers of the formats of the field; nothing else."""
