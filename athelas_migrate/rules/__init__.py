"""Declarative key-mapping rules: schema, ops (one class each, `ops/`), inverses, the version graph, the applier."""
