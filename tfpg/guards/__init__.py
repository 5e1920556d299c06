"""Trust and recovery: bounds on values, one writer per output with atomic
writes, and no code run from a model directory."""
