"""`athelas-migrate family new`: scaffold a family folder from a legacy class, a target class and a sample batch.

`cli.py` holds the click command (imports only click); `build.py` constructs both classes, infers and proves the
rule file (`athelas_migrate.infer`) and writes the folder atomically; `templates.py` holds the text of the files
it writes. To change what a scaffolded family looks like, edit the templates; the family itself is declared with
`athelas_migrate.families.simple.SimpleFamily` and `athelas_migrate.equivalence.sample_batch`.
"""
