"""Storage: the state-store seam (base), QSS (erasure-coded, encrypted, self-healing) and its parts."""
