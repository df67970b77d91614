"""Typed refusals, each mapped to one stable exit code in one place.

Exit codes (documented in the README): 0 success, 1 verification or check
failed, 2 usage error, 3 input refused, 4 cannot write the output, 70 internal
error (a bug).

To add a refusal, subclass the error whose exit code it should have (InputError 3, UsageError 2, OutputError 4,
ValidationError 1, RuleError 3) and give it the fields a caller needs (VersionGraphError, MissingInformationError);
the CLI's error boundary (`cli.error_boundary`) prints its message without a traceback and exits with its
`exit_code`, so no command changes.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2
EXIT_REFUSED = 3
EXIT_OUTPUT = 4
EXIT_INTERNAL = 70


class AthelasError(Exception):
    """Base of every error the tool reports to users without a traceback."""

    exit_code = EXIT_REFUSED


class UsageError(AthelasError):
    """The command was called wrongly (bad option values, conflicting --set, NEW == OLD)."""

    exit_code = EXIT_USAGE


class InputError(AthelasError):
    """The input file cannot be read as a checkpoint (empty, truncated, not a checkpoint)."""


class NotACheckpointError(InputError):
    """A readable, safe file that holds no state dict at all (a plain tensor, a dict of inputs and outputs):
    `batch` reports it as skipped, not failed (a golden-output file beside the checkpoints)."""


class NotApplicableError(UsageError):
    """A supplied value the file has no use for (`tab_field_list` for a checkpoint without a tabular branch).

    An error for a value given for this file; `batch` ignores a shared value (`--set`, `--config`) for the files
    it does not apply to, with a note. `key` names the value."""

    def __init__(self, message: str, key: str):
        super().__init__(message)
        self.key = key


class UnsafeCheckpointError(InputError):
    """The pickle references a class outside the reviewed allowlist."""

    def __init__(self, classpath: str, keypath: str):
        self.classpath = classpath
        self.keypath = keypath
        super().__init__(
            f"refused: the checkpoint references {classpath!r} at {keypath}, which is not on the "
            f"reviewed allowlist; nothing from it was executed"
        )


class UnknownLayoutError(InputError):
    """The checkpoint is readable but matches no known family or layout."""


class MissingInformationError(InputError):
    """Hyper-parameters the target needs are neither in the checkpoint nor supplied.

    Carries every missing item at once (`needs`: key, why the file cannot tell it, an example) and a
    ready-to-edit config (`skeleton`: every known value filled in, the unknown ones marked), so one refusal
    is enough: a second run with exactly what it names succeeds.
    """

    def __init__(self, message: str, needs: list | None = None, skeleton: dict | None = None):
        super().__init__(message)
        self.needs = list(needs or [])
        self.skeleton = skeleton


class RuleError(AthelasError):
    """A rule file is malformed, or the rules do not cover the checkpoint exactly.

    `rule_file` and `rule_id` name the rule concerned when there is one (a refusal about a whole checkpoint has
    neither), so callers can act on them without parsing the message.
    """

    def __init__(self, message: str, *, rule: str = "") -> None:
        """Make the refusal.

        Args:
            message: the one-line message shown to the user.
            rule: the rule concerned as "<file>#<id>" (the form reports cite), or "" for none.
        """
        super().__init__(message)
        self.rule_file, _, self.rule_id = rule.partition("#")


class VersionGraphError(RuleError):
    """The rule files of a family do not form one version history (checked once, when the rule files load):
    a cycle, more than one newest version, or a family whose declared newest layout is not the graph's head."""

    def __init__(self, message: str, family: str, versions: tuple[str, ...] = (), rule_files: tuple[str, ...] = ()):
        super().__init__(message)
        self.family, self.versions, self.rule_files = family, versions, rule_files


class ValidationError(AthelasError):
    """The migrated state does not equal the target layout exactly."""

    exit_code = EXIT_CHECK_FAILED


class MalformedSourceError(InputError):
    """The input belongs to a known family but is not an exact layout of it (missing/extra keys, shapes)."""


class NotInvertibleError(RuleError):
    """A rollback was asked for across a rule that cannot be undone."""


class OutputExistsError(UsageError):
    """The destination exists and --force was not given."""


class OutputError(AthelasError):
    """The output cannot be written (read-only directory, no space left, name too long): not the input's fault.

    Kept apart from InputError so a CI script can tell a bad checkpoint (3) from a full disk (4).
    """

    exit_code = EXIT_OUTPUT
