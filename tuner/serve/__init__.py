"""Serving under traffic: arrivals and traces, serving metrics and records, capacity."""
