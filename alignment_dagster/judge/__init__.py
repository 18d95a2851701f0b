"""The constitutional judge: prompts, position-debiased principle votes, aggregation, caching."""
