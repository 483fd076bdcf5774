"""Offcut for Krita: local background removal through the Offcut sidecar.

Krita imports this package when the plug-in is enabled (Settings ▸ Configure Krita ▸ Python
Plugin Manager): it registers the docker and the action, nothing else. Models, pixels and
settings are handled in the modules it imports; the sidecar is only contacted when the user
starts it or runs a job.

The package is ``offcut_krita`` (the ``X-KDE-Library`` of ``offcut_krita.desktop``), never
``offcut``: that name belongs to the sidecar, which the client may look for on ``sys.path``,
and Krita puts this package's folder (pykrita) on it. Outside Krita (the unit tests import the
stdlib-only ``pixels`` module) there is nothing to register.
"""

try:
    from krita import DockWidgetFactory, DockWidgetFactoryBase, Krita
except ImportError:  # not inside Krita
    Krita = None

if Krita is not None:
    from . import i18n

    i18n.setup()  # before any text is made: Krita's language, where the environment lacks it

    from .docker import DOCKER_ID, OffcutDocker
    from .extension import OffcutExtension

    _app = Krita.instance()
    _app.addDockWidgetFactory(
        DockWidgetFactory(DOCKER_ID, DockWidgetFactoryBase.DockPosition.DockRight, OffcutDocker)
    )
    _app.addExtension(OffcutExtension(_app))
