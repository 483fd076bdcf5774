"""Offcut for Krita: local background removal through the Offcut sidecar.

Krita imports this package when the plug-in is enabled (Settings ▸ Configure Krita ▸ Python
Plugin Manager): it registers the docker and the action, nothing else. Models, pixels and
settings are handled in the modules it imports; the sidecar is only contacted when the user
starts it or runs a job.
"""

from krita import DockWidgetFactory, DockWidgetFactoryBase, Krita

from .docker import DOCKER_ID, OffcutDocker
from .extension import OffcutExtension

_app = Krita.instance()
_app.addDockWidgetFactory(
    DockWidgetFactory(DOCKER_ID, DockWidgetFactoryBase.DockRight, OffcutDocker)
)
_app.addExtension(OffcutExtension(_app))
