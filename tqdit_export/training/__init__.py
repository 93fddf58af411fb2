"""Scripts that reproduce the bundled weights (DiT on digits, metrics classifier)."""
