"""veza_api."""
