"""`hero bench`: end-to-end benchmarks of a real node through its HTTP API."""
