"""Model families, the embedded tiny models, loading, and what trains."""
