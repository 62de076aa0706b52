"""Batch scoring: one engine streams a table file or an image batch through a detector into its report,
summary, page and plots."""
