"""Errors that reach the user as one line (see ``sumtune.cli.run_main``)."""


class SumtuneError(Exception):
    """A problem the user can fix: printed as one line, the process exits non-zero."""

    exit_code = 2


class ConfigError(SumtuneError):
    """A bad run config: unknown key, wrong type or impossible value."""


class DataError(SumtuneError):
    """A bad data file: missing, unreadable, malformed, missing column, bad row."""


class DiskFullError(SumtuneError):
    """The disk filled up while saving. Whichever rank hit it reports it (not only rank 0: under
    DeepSpeed every rank writes its own shards)."""

    any_rank = True


def is_disk_full(err: BaseException, path=None) -> bool:
    """Whether ``err`` means the disk is full. torch.save reports it as a RuntimeError without an
    errno ("unexpected pos ..."), safetensors as a SafetensorError naming os error 28: for those,
    the free space left where ``path`` lives decides."""
    import errno
    import shutil

    if getattr(err, "errno", None) == errno.ENOSPC:
        return True
    text = str(err)
    if "No space left on device" in text or "os error 28" in text:
        return True
    if path is not None and isinstance(err, RuntimeError):
        from pathlib import Path

        folder = Path(path)
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        try:
            return shutil.disk_usage(folder).free < 1 << 20
        except OSError:
            return False
    return False
