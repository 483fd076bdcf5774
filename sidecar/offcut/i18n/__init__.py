"""Offcut's translation catalogs: sources, extraction and compilation (docs/translations.md).

The plug-ins translate at run time with :mod:`offcut.client.i18n` (standard library only).
This package is the other half, used by developers and by ``offcut install``:

* :mod:`.po` reads and writes gettext PO files and compiles them to MO files with the standard
  library alone, so installing needs no GNU gettext on the user's machine;
* :mod:`.extract` finds the marked sentences of each component in its Python sources;
* ``po/<component>/<lang>.po`` hold the translations, one folder per component (the GIMP
  plug-in, the Krita plug-in, the client's messages), so the people and tools working on one
  part never edit another's files. All components compile into one catalog per language,
  in the one domain ``offcut``.

``python -m offcut.i18n update`` refreshes the templates and the PO files from the sources;
``python -m offcut.i18n check`` fails when they are out of date or incomplete.
"""

from __future__ import annotations

from pathlib import Path

#: The languages Offcut ships, as gettext names them (the editors' own locale names).
LANGUAGES = ("de", "fr", "es", "pt_BR", "it", "ru", "ja", "zh_CN", "ko")

#: The folder of the PO sources: ``po/<component>/<component>.pot`` and ``<lang>.po``.
PO_DIR = Path(__file__).resolve().parent / "po"
