"""Batch scoring: streaming a file through a detector into a report, its summary and its plots."""
