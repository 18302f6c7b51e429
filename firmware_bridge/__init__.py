"""firmware_bridge package (see shared DESIGN.md for what lives here)."""
