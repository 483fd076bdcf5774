"""The plug-ins' translations: one gettext domain, English as the fallback, never an error.

Both plug-ins and the client mark every sentence a user sees with :func:`_` (or :func:`N_`
where the text is declared in a table before a language is known, and translated where it is
shown). ``offcut install`` compiles the catalogs (``offcut.i18n``) into the plug-in's own
``locale/<lang>/LC_MESSAGES/offcut.mo``; this module finds that folder next to the client copy,
so each plug-in carries its own translations and needs nothing from the editor's.

The language is the editor's: GIMP exports it to its plug-ins in ``LANGUAGE``/``LANG``, which
gettext reads; Krita's Python runs inside Krita, which sets its UI language the same way, and
the Krita plug-in may name it with :func:`configure`. A missing, partial or broken catalog
falls back to English, string by string: a translation problem must never stop a user from
removing a background, and a translated sentence whose placeholders do not fit is shown in
English rather than raising.

Sentences with values use named ``str.format`` placeholders (``{layer}``), so a translation may
reorder them; ``_("Removed {count} backgrounds", count=n)`` translates, then fills them in.

Standard library only, Python 3.8+ (copied into editor plug-ins as ``offcut_client``).
"""

import gettext
import os
import threading
from typing import Any, Optional, Sequence

#: The gettext domain of every Offcut catalog (``offcut.mo``), Offcut's own, not the editor's.
DOMAIN = "offcut"

_lock = threading.Lock()
_state = {"languages": None, "folder": None, "translation": None}  # type: dict


def locale_dir() -> str:
    """The plug-in's ``locale`` folder: beside the client copy (``offcut_client/..``)."""
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "locale")


def configure(languages: Optional[Sequence[str]] = None, folder: Optional[str] = None) -> None:
    """Choose the languages (best first; None: from the environment) and the catalog folder.

    Called by a plug-in that knows its editor's language better than the environment does, and
    by tests; every later :func:`_` uses the new choice.
    """
    with _lock:
        _state["languages"] = list(languages) if languages is not None else None
        _state["folder"] = folder
        _state["translation"] = None


def translation() -> gettext.NullTranslations:
    """The current catalog, loaded once; English (no catalog) when none loads."""
    current = _state["translation"]
    if current is not None:
        return current
    with _lock:
        if _state["translation"] is None:
            try:
                loaded = gettext.translation(
                    DOMAIN,
                    _state["folder"] or locale_dir(),
                    languages=_state["languages"],
                    fallback=True,
                )
            except Exception:  # a broken .mo (bad magic, truncated, bad charset): English
                loaded = gettext.NullTranslations()
            _state["translation"] = loaded
        return _state["translation"]


def _fill(template: str, params: Any) -> str:
    return template.format(**params) if params else template


def _(message: str, **params: Any) -> str:
    """``message`` in the user's language, with its ``{name}`` placeholders filled from params.

    A translation that cannot be filled (a placeholder misspelt by a translator) gives the
    English sentence instead.
    """
    try:
        translated = translation().gettext(message)
    except Exception:  # a catalog entry that cannot be decoded: English
        translated = message
    try:
        return _fill(translated, params)
    except (KeyError, IndexError, ValueError):
        return _fill(message, params)


def ngettext(singular: str, plural: str, n: int, **params: Any) -> str:
    """The singular or plural form (by the language's own rule) of a counted sentence.

    ``n`` is available to the sentence as ``{n}``.
    """
    params = dict(params, n=n)
    english = singular if n == 1 else plural
    try:
        translated = translation().ngettext(singular, plural, n)
    except Exception:
        translated = english
    try:
        return _fill(translated, params)
    except (KeyError, IndexError, ValueError):
        return _fill(english, params)


def N_(message: str) -> str:
    """Mark ``message`` for translation without translating it yet (tables declared at import).

    Where the text is shown, pass it through :func:`_`.
    """
    return message


def language() -> str:
    """The language of the loaded catalog (``"en"`` when none is), for logs and tests."""
    info = translation().info()
    return info.get("language", "en") if isinstance(info, dict) else "en"
