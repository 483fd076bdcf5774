"""The sentences of errors a user can meet, each under a stable key with named parameters.

An error travels as a code (what kind of failure, docs/protocol.md), a message key and its
parameters, and the English sentence. The plug-in renders the key in the editor's language
(:func:`text`); the English ``message`` stays for logs, old clients and unknown keys. Keys are
written once, here, for the sidecar and the client alike (the sidecar imports this module).

Each template is marked with ``N_`` for the ``client`` catalog and uses named ``{placeholders}``
that the parameters fill; a parameter is a short value (a model name, a number, a format), never
pixel data or a user's path.
"""

from typing import Any, Dict, Mapping, Optional

from .i18n import N_, _

#: key -> English template. Add a key here, raise it with its parameters, run
#: ``python -m offcut.i18n update``, and translate it in po/client/<lang>.po.
MESSAGES: Dict[str, str] = {
    "cancelled": N_("Cancelled."),
}


def english(key: str, params: Optional[Mapping[str, Any]] = None) -> str:
    """The English sentence of ``key`` (the ``message`` an error carries with it)."""
    return MESSAGES[key].format(**dict(params or {}))


def text(key: Optional[str], params: Optional[Mapping[str, Any]], fallback: str) -> str:
    """The sentence of ``key`` in the user's language, else ``fallback`` (the English message).

    An unknown key (a newer sidecar) or parameters that do not fit the template give the
    fallback: the user always gets the sentence the sidecar wrote.
    """
    template = MESSAGES.get(key or "")
    if template is None:
        return fallback
    try:
        template.format(**dict(params or {}))  # the parameters fit the English sentence
    except (KeyError, IndexError, ValueError, TypeError):
        return fallback
    return _(template, **dict(params or {}))
