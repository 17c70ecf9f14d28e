"""The bottom layer: errors, tensor specs, artifacts, records, console, safe output writing, value checks."""
