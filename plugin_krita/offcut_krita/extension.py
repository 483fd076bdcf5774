"""The "Remove Background" action: the docker's job, from a menu entry and a shortcut.

It runs with the settings the docker shows (kept by the shared controller and saved in
kritarc), so a user can set the output once and then work from the keyboard.
"""

from krita import Extension

from . import controller as ctl
from .i18n import _

ACTION_ID = "offcut_remove_background"


class OffcutExtension(Extension):
    def __init__(self, parent):
        super().__init__(parent)

    def setup(self):
        """Nothing to do before windows exist; the controller is created on first use."""

    def createActions(self, window):
        # The shortcut comes from offcut_krita.action. Krita translates an .action file's
        # texts with its own catalog, which does not know Offcut's sentences, so the menu text
        # and tooltip are set here, in the plug-in's language, over the file's English ones.
        action = window.createAction(ACTION_ID, _("Remove Background (Offcut)"), "tools/scripts")
        action.setText(_("Remove Background (Offcut)"))
        action.setToolTip(_("Remove the background of the active layer with Offcut."))
        action.setStatusTip(_("Remove the background of the active layer with Offcut."))
        controller = ctl.get()
        action.triggered.connect(controller.run_active)
        controller.register_action(action)
