class UserError(Exception):
    """An error caused by the user's input; the CLI prints it as one line."""


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived while worker processes were running (``parallel.WorkerPool``):
    raised like Ctrl-C's KeyboardInterrupt so the same clean-up stops the workers; the
    CLI exits 143 (128 + SIGTERM)."""
