"""The one base class of errors a user can fix.

A :class:`UserError` says, as a sentence, what in the request cannot go ahead and what to
change (a missing file, a bad option, a model with no chat template). The pages show it as
``st.error`` (``ui.common.guard``), the CLI prints it after ``error:`` and exits non-zero, a
job stores it as its error. Any other exception is a bug: the page shows its traceback in
development (Streamlit's ``client.showErrorDetails``), the CLI and the worker print it.

It subclasses ValueError, so code written as ``except ValueError`` still catches it.
"""

from __future__ import annotations


class UserError(ValueError):
    """A request that cannot go ahead as asked; the message says what to change."""
