"""Catalog service: the searchable read model of finished recordings."""
