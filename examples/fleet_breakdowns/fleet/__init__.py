"""Delivery vans scored each day for the chance of a breakdown, with batchinfer_assets."""
