"""Op backends: torch (reference, everywhere)."""
