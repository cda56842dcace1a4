"""Training: one loop, stages as configuration, exact resume."""
