"""hskstore: extract a teacher's compressed hidden-state knowledge once, distil students from it anywhere."""

__version__ = "0.1.0"
