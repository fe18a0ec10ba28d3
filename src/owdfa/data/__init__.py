"""Data ingest: benchmark sources, indexing, protocols, splits and the face cache (training views: `owdfa.train`)."""
