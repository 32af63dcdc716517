"""veza_cli."""
