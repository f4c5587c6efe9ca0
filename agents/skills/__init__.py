"""Skills: small, deterministic abilities an agent tries before asking the LLM."""
