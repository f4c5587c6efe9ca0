"""Agents as virtual actors: activation, mailboxes, hibernation, durable timers."""
