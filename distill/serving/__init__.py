"""Serving the distilled student: the thin front before vLLM's OpenAI-compatible server.

routes   which served adapter a request's `model` names (`<task>`, `<task>@vNNNN`)
front    the Starlette app: proxy to vLLM, input formatting, /health, /metrics, capture
capture  live traffic into Parquet shards (scrubbed, rotated, size-capped), and reading it back
scrub    secrets and configured PII patterns out of captured text
metrics  request counts, latency percentiles, tokens, errors
"""
