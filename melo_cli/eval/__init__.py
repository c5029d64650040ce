"""Scoring an edited model: edit success, generality, locality, perplexity and routing (metrics, report),
fluency of what it generates (fluency), retention over time (history) and its plot (plot)."""
