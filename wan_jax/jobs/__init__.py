"""How a run's config is assembled from what the user brings, beside our Python configs:
ai-toolkit job files (`ai_toolkit`) and checked command-line overrides (`overrides`)."""
