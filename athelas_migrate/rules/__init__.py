"""Declarative key-mapping rules: schema, inverses, the version graph, the applier."""
