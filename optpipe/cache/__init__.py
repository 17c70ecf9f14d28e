"""The content-addressed pass cache, the model identity it keys on, the reference cache and cache care."""
