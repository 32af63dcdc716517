"""veza_core."""
