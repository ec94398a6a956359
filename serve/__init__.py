"""`agile serve`: a Perspective-compatible HTTP front for the scoring workers (no torch, no keras)."""
