"""`pigg serve`: the global agent and every user's adapter behind one HTTP API (engine, batcher, app)."""
