"""Browser computers: one Chromium process per computer, driven over CDP."""
