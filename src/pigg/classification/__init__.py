"""Text classification (seed 004): answers read strictly as labels, and the metrics seed 004 reports."""
