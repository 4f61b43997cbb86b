"""Image-quality metrics: a light registry (no torch) and a loader that needs pyiqa."""
