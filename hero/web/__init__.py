"""The web edge: OpenAI-compatible chat API, user and operator APIs, pages. No agent logic here."""
