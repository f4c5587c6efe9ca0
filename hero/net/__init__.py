"""The Mycelium-compatible overlay: links, routing, end-to-end crypto, the message API and the L3 face."""
