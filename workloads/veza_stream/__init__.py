"""veza_stream."""
