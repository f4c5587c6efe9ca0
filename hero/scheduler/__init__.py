"""What runs when: the shared LLM service and its fair queue."""
