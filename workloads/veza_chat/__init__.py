"""veza_chat."""
