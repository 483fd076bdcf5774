"""The GIMP plug-in's logic, kept apart from GIMP so that it can be tested without ``gi``.

``offcut-remove-background.py`` (next to this package) registers the procedure, shows the dialog
and moves pixels through GEGL buffers; everything it decides on plain values lives here:

* ``pixels``: image precision → read/wire/mask formats, the size ladder for deep images, row
  cropping and keeping the layer's alpha under decontaminated colours;
* ``run``: the plug-in process's one ``Session`` (client, query flag, request in flight, cancel),
  the model list, the sidecar request and its typed ``Result``, and every user-facing sentence.

Standard library and the bundled ``offcut_client`` only, Python 3.8 syntax: GIMP's Python (Flatpak,
AppImage, the Windows and macOS bundles) cannot install anything else.
"""
