"""The model catalog, the verified on-disk store, and the only network code."""
