"""Power: node watts (RAPL or the profile's model), per-agent energy, the governor, history and metrics."""
