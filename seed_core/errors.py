"""The one error hierarchy of the project (seed_core and seed_det alike).

Every error here is a problem the user can fix; its message says what was wrong and what to do.
Command-line tools catch `SeedError` and print the message without a traceback.
"""


class SeedError(Exception):
    """A problem with the user's input or environment (config, checkpoint, dataset, run)."""


class ConfigError(SeedError, ValueError):
    """A config that cannot run: unknown key, wrong type, impossible value, unreadable file."""


class CheckpointError(SeedError):
    """A checkpoint that cannot be read, does not fit, or cannot be written."""


class DatasetError(SeedError, ValueError):
    """A dataset that is missing, malformed or unusable; the message names the file."""


class TrainingError(SeedError):
    """A run that cannot go on (non-finite loss, too many unreadable images, a lost peer)."""


class NonFiniteLossError(TrainingError):
    """The loss became NaN or infinite; the message names the iteration."""


class TooManyBadImagesError(TrainingError):
    """More unreadable images than the training set tolerates (DATA.MAX_BAD_FRACTION and the like)."""


class ProcessFailedError(TrainingError):
    """A process of a multi-process run failed with an error that is not a SeedError (a bug, memory
    exhausted, a library's own failure): its one line names the rank, the error and the run log,
    which holds the traceback."""


class PeerLostError(TrainingError):
    """Another process of a multi-process run died or stopped answering: stop instead of waiting forever."""


class RunFolderError(ConfigError):
    """An output folder that cannot take this run: it holds a finished run (and neither --resume nor
    --overwrite was given), or another run is writing there now (its lock file names the owner)."""


class DownloadError(SeedError):
    """A file that could not be downloaded (offline, server error, interrupted); the message gives
    the URL and the path where the file can be placed by hand."""


class ChecksumError(DownloadError):
    """A downloaded file whose checksum differs from the published (or first recorded) one."""


class ExportError(SeedError):
    """A network that cannot be exported (an operator ONNX lacks, the export extra not installed) or
    whose export does not compute what the network computes."""
