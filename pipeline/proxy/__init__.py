"""The routing proxy: `/mcp/<server>` requests admitted, routed to a live upstream and relayed.

front (uvicorn fast path) → exchange (one client request) → relay (admit, route, forward)
→ pool (pooled upstream HTTP/1.1 connections); router holds the upstream table and sessions,
access the keys, scopes, rate limits and origins, usage the per-key counters.
"""
