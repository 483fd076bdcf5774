"""The plug-in's translations: ``_``, ``N_`` and ``ngettext`` from the installed client copy.

``offcut install krita`` puts the client package beside this one as ``offcut_client`` and the
compiled catalogs in ``locale/<lang>/LC_MESSAGES/offcut.mo`` (docs/translations.md); the
runtime is ``offcut_client.i18n``. Without the client (a broken install, which the docker
reports) the functions below keep every sentence in English, so the docker can still say what
is wrong.

The language is Krita's. At start Krita puts its own language setting (Settings ▸ Switch
Application Language, kept in ``klanguageoverridesrc``) into ``LANGUAGE`` before it starts
Python, so gettext's environment lookup (``LANGUAGE``, ``LC_ALL``, ``LC_MESSAGES``, ``LANG``)
follows Krita's choice on Linux. Where none of those variables is set (Windows and macOS, whose
Krita reads the system's languages without exporting them) the plug-in asks Qt for the UI
languages instead: :func:`krita_languages`.
"""

import os

try:
    from .offcut_client.i18n import N_, _, configure, ngettext
except ImportError:  # pragma: no cover - a broken install: English, reported in the docker

    def _(message, **params):
        return message.format(**params) if params else message

    def N_(message):
        return message

    def ngettext(singular, plural, n, **params):
        return (singular if n == 1 else plural).format(n=n, **params)

    def configure(languages=None, folder=None):
        pass


__all__ = ["N_", "_", "configure", "krita_languages", "ngettext", "setup"]

_ENV = ("LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG")

# Qt's script-tagged Chinese names and what gettext calls them.
_QT_NAMES = {"zh_Hans": "zh_CN", "zh_Hant": "zh_TW"}


def _gettext_name(qt_name):
    """``de-DE`` → ``de_DE``, ``zh-Hans-CN`` → ``zh_CN``, ``pt-BR`` → ``pt_BR``."""
    name = qt_name.replace("-", "_")
    for qt, gettext_name in _QT_NAMES.items():
        if name == qt or name.startswith(qt + "_"):
            return gettext_name
    return name


def krita_languages(environ=None, ui_languages=None):
    """The languages to look up, best first; None when gettext's environment lookup is right.

    ``ui_languages`` is Qt's ``QLocale().uiLanguages()`` (Krita sets Qt's default locale to
    its language too); it is only consulted when the environment names no language at all.
    """
    env = os.environ if environ is None else environ
    if any(env.get(name) for name in _ENV):
        return None
    names = [_gettext_name(str(n)) for n in (ui_languages or []) if n]
    return names or None


def setup():
    """Point the catalog lookup at Krita's language where the environment does not say it."""
    try:
        from .qt import QtCore

        ui = list(QtCore.QLocale().uiLanguages())
    except Exception:  # outside Krita, or a Qt without uiLanguages: the environment decides
        ui = []
    languages = krita_languages(ui_languages=ui)
    if languages is not None:
        configure(languages)
