"""Ingestion: ROOT files (EDM4hep Fuτure, JetClass) -> labelled jets -> Parquet shards."""
