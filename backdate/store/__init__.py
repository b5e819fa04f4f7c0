"""backdate's own state: its backup files."""
