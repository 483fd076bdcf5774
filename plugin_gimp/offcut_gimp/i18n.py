"""The GIMP plug-in's sentences in the user's language (docs/translations.md, docs/gimp.md).

The translating is the bundled client's (``offcut_client.i18n``): it reads the plug-in's own
``locale/<lang>/LC_MESSAGES/offcut.mo`` (compiled by ``offcut install gimp``) in the language
GIMP gives its plug-ins (``LANGUAGE``/``LANG``). This module only imports it on the first
sentence, not when the plug-in starts: the run's connection to the sidecar is prefetched in a
thread while ``gi`` loads, and importing the client here first would serialise the two.

Without the client (a broken install, or these modules tested on their own) every sentence is
the English one: a translation problem never stops the plug-in, and a missing client is
reported in words by the run itself (``run._connect_bundled``).

Mark a sentence with ``_`` where it is shown, ``N_`` in a table declared at import (and pass it
through ``_`` where it is shown), ``ngettext`` for counts. Values fill named ``{placeholders}``
so that a translation may reorder them.
"""

_runtime = []  # [module or None], filled on first use


def _client_i18n():
    if not _runtime:
        try:
            from offcut_client import i18n as module
        except Exception:  # no usable client beside the plug-in: English
            module = None
        _runtime.append(module)
    return _runtime[0]


def _fill(text, params):
    return text.format(**params) if params else text


def _(message, **params):
    """``message`` in the user's language, its ``{name}`` placeholders filled from ``params``."""
    module = _client_i18n()
    if module is not None:
        return module._(message, **params)
    return _fill(message, params)


def ngettext(singular, plural, n, **params):
    """The form of a counted sentence for ``n`` (available to it as ``{n}``)."""
    module = _client_i18n()
    if module is not None:
        return module.ngettext(singular, plural, n, **params)
    return _fill(singular if n == 1 else plural, dict(params, n=n))


def N_(message):
    """Mark ``message`` for translation without translating it (tables made at import)."""
    return message


def language():
    """The language of the loaded catalog (``"en"`` without one), for logs and tests."""
    module = _client_i18n()
    return module.language() if module is not None else "en"
