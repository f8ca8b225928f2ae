"""Domain errors: each becomes one line on stderr and exit code 2 in the CLI."""


class VramplanError(Exception):
    """Bad input or unsupported request; the message says what is wrong and what is accepted."""


class UnknownModelError(VramplanError):
    pass


class UnknownGpuError(VramplanError):
    pass


class ConfigError(VramplanError):
    """A config.json that cannot be read as a supported causal LM."""


class RunRecordError(VramplanError):
    """A run record that is corrupt or does not match the schema."""
