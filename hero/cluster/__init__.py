"""Many nodes as one cluster: its key, Ray, the host actors and the directory's client side."""
