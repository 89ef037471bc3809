"""Human-readable report of a selection run: one self-contained HTML file."""

from .html import sample_map_rows, write_report

__all__ = ["sample_map_rows", "write_report"]
