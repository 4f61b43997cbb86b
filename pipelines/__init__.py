"""Declarative pipeline definitions (YAML) bundled with curate; see curation.config."""
