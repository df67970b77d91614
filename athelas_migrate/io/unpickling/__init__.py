"""The parts of the restricted unpickler (`athelas_migrate.io.safe_unpickle` is its entry point), one job each.

- `limits`: the bounds a pickle may not exceed, and the work budget converters and stubs are charged to;
- `records`: the inert, sealed objects the pickle VM is handed instead of real classes;
- `rebuild`: torch's tensor rebuild functions, reimplemented as tensor-record constructors;
- `converters`: reviewed constructors of harmless classes (paths, devices, sets, ...) as plain values;
- `numpy_values`: numpy dtypes, scalars and arrays as plain values;
- `class_paths`: the explicit list of whole-module class paths (legacy models and their torch layers);
- `allowlist`: what each global a pickle names becomes (`resolve_global`), or its refusal;
- `opcodes`: the pre-scan of the opcodes, before the pickle VM runs;
- `plain`: the conversion of the loaded records into plain values and TensorRefs.

To allow a new class, add it to the table of the module that owns its kind (see `allowlist`'s docstring).
"""
