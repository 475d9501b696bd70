"""Open Images: a release's CSVs and hierarchy JSON -> arrays, cache, dataset bundle."""
