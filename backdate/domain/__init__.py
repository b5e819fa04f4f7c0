"""backdate's vocabulary and rules, free of I/O."""
