"""The "Remove Background" action: the docker's job, from a menu entry and a shortcut.

It runs with the settings the docker shows (kept by the shared controller and saved in
kritarc), so a user can set the output once and then work from the keyboard.
"""

from krita import Extension

from . import controller as ctl

ACTION_ID = "offcut_remove_background"


class OffcutExtension(Extension):
    def __init__(self, parent):
        super().__init__(parent)

    def setup(self):
        """Nothing to do before windows exist; the controller is created on first use."""

    def createActions(self, window):
        # The text, shortcut and icon come from offcut_krita.action; these are the fallbacks.
        action = window.createAction(ACTION_ID, "Remove Background (Offcut)", "tools/scripts")
        action.setToolTip("Remove the background of the active layer with Offcut.")
        controller = ctl.get()
        action.triggered.connect(controller.run_active)
        controller.register_action(action)
