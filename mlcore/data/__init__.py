"""Data wing: raw and curated files, their validation and their integrity records."""
