"""veza_operator."""
