"""The built-in domains: each module exposes `domain`, a `batchinfer_assets.Domain`."""
