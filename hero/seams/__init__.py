"""The seams between Hero's parts: what one part may ask of another, as protocols and the records they carry.

A part imports only these modules of the others, never their own; `hero/server.py`,
the composition root, is the one module that knows every part and hands each the
others behind these shapes. The type checker (`make test` runs mypy over hero/)
checks every implementation against its seam where the server wires it, so a part
cannot reach around a seam and a seam cannot drift from what implements it.

- `power`: runtime ↔ power (metering, admission); web ↔ power (reports, metrics snapshot, history)
- `llm`: runtime ↔ scheduler (completions); web and power ↔ scheduler (figures, the governor's levers)
- `node`: web ↔ runtime (deliver, agent status, counters); power ↔ runtime (the governor's levers)
- `store`: runtime ↔ store (the versioned, fenced state store)
- `net`: runtime ↔ net (agents send); web ↔ net (the overlay's status)
- `users`: web ↔ the user registry
- `chat`: web ↔ chat (agents' histories as the edge reads them)
- `skills`: runtime ↔ skills (an agent's spec verified before it is activated)
"""
