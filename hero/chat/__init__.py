"""Chat: what an agent and its user said to each other (its history), kept in the agent's state and read by the edge.

The runtime knows events, turns and state, not chat. A chat agent (`ChatAgent`)
keeps its history here; the web layer reads any agent's history, and listens to
new entries, through `Histories`, never through the runtime's internals.
"""
