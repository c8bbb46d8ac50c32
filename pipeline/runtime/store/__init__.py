"""What a run keeps on disk: the fit cache, the progress store, the run lock, the manifest of
its files, stage records and timings."""
