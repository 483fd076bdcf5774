"""The Offcut docker: settings, the Remove Background button, progress, and the sidecar's status.

It holds no state of its own beyond its widgets: settings, the running job and the sidecar
connection belong to the shared controller, so every window's docker and the action agree.
"""

from krita import DockWidget

from . import controller as ctl
from . import job
from .i18n import N_, _
from .qt import (
    QApplication,
    QCheckBox,
    QComboBox,
    QFormLayout,
    QFrame,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    Qt,
    QTimer,
    QVBoxLayout,
    QWidget,
)

DOCKER_ID = "offcut_docker"
TITLE = N_("Offcut: Remove Background")

_STATE_TEXT = {
    ctl.STOPPED: ("#888888", N_("Stopped — starts on first use")),
    ctl.STARTING: ("#d4a017", N_("Starting…")),
    ctl.CONNECTED: ("#3aa655", N_("Connected")),
    ctl.ERROR: ("#d9534f", N_("Error")),
}

_STAGES = {
    "reading": N_("Reading the layer…"),
    "queued": N_("Waiting for the sidecar…"),
    "decode": N_("Preparing…"),
    "inference": N_("Finding the subject…"),
    "postprocess": N_("Building the mask…"),
    "refine": N_("Refining edges…"),
    "decontaminate": N_("Cleaning edge colours…"),
    "encode": N_("Sending the result…"),
    "done": N_("Done"),
    "cancelled": N_("Cancelled"),
    "failed": N_("Failed"),
}


# The sidecar's aliases (models/catalog.json) in words of this plug-in's catalogs: label and
# tooltip. An alias not listed here is shown with the sidecar's own (English) label.
_ALIAS_TEXT = {
    "fast": (N_("Fast"), N_("The quickest model: good on clear subjects, softer edges.")),
    "best": (N_("Best quality"), N_("Sharper, more detailed edges; slower.")),
}


class OffcutDocker(DockWidget):
    def __init__(self):
        super().__init__()
        self.setWindowTitle(_(TITLE))
        self.ctl = ctl.get()
        self._build()
        self.ctl.state_changed.connect(self._show_state)
        self.ctl.models_changed.connect(self._fill_models)
        self.ctl.busy_changed.connect(self._show_busy)
        self.ctl.progress.connect(self._show_progress)
        self.ctl.message.connect(self._show_message)
        self.ctl.settings_changed.connect(self._show_settings)
        self._fill_models()
        self._show_settings()
        self._show_state()
        self._show_busy(self.ctl.busy)

    # -- layout -----------------------------------------------------------------------------

    def _build(self):
        root = QWidget(self)
        box = QVBoxLayout(root)
        form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)

        self.model = QComboBox()
        self.model.setObjectName("offcut_model")
        self.model.setToolTip(
            _(
                "The segmentation model: Fast or Best quality, or a model by name. Install "
                "more with `offcut models fetch`."
            )
        )
        self.model.activated.connect(self._model_chosen)
        form.addRow(_("Model:"), self.model)

        self.output = QComboBox()
        self.output.setObjectName("offcut_output")
        for key, label in job.OUTPUTS:
            self.output.addItem(_(label), key)
        self.output.activated.connect(self._output_chosen)
        form.addRow(_("Output:"), self.output)
        box.addLayout(form)

        self.refine = QCheckBox(_("Refine edges"))
        self.refine.setObjectName("offcut_refine")
        self.refine.setToolTip(_("Follow hair and fine edges more closely (a little slower)."))
        self.refine.toggled.connect(lambda on: self.ctl.update_settings(refine=on))
        self.decontaminate = QCheckBox(_("Decontaminate colours"))
        self.decontaminate.setObjectName("offcut_decontaminate")
        self.decontaminate.toggled.connect(lambda on: self.ctl.update_settings(decontaminate=on))
        box.addWidget(self.refine)
        box.addWidget(self.decontaminate)

        buttons = QHBoxLayout()
        self.run_button = QPushButton(_("Remove Background"))
        self.run_button.setObjectName("offcut_run")
        self.run_button.setToolTip(
            _(
                "Process the active layer (only the selection's area if "
                "there is a selection). Shortcut: Ctrl+Alt+B."
            )
        )
        self.run_button.clicked.connect(self.ctl.run_active)
        self.cancel_button = QPushButton(_("Cancel"))
        self.cancel_button.setObjectName("offcut_cancel")
        self.cancel_button.clicked.connect(self.ctl.cancel)
        buttons.addWidget(self.run_button, 1)
        buttons.addWidget(self.cancel_button)
        box.addLayout(buttons)

        self.bar = QProgressBar()
        self.bar.setObjectName("offcut_progress")
        self.bar.setRange(0, 1000)
        self.bar.setValue(0)
        self.bar.setTextVisible(True)
        self.bar.setFormat(_("Idle"))
        box.addWidget(self.bar)

        msg_row = QHBoxLayout()
        self.msg = QLabel("")
        self.msg.setObjectName("offcut_message")
        self.msg.setWordWrap(True)
        self.msg.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.msg.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.copy_button = QPushButton(_("Copy error"))
        self.copy_button.setObjectName("offcut_copy_error")
        self.copy_button.setToolTip(_("Copy the full error text (for a bug report)."))
        self.copy_button.clicked.connect(self._copy_error)
        self.copy_button.setVisible(False)
        msg_row.addWidget(self.msg, 1)
        msg_row.addWidget(self.copy_button, 0, Qt.AlignmentFlag.AlignTop)
        box.addLayout(msg_row)

        line = QFrame()
        line.setFrameShape(QFrame.Shape.HLine)
        line.setFrameShadow(QFrame.Shadow.Sunken)
        box.addWidget(line)

        self.status = QLabel("")
        self.status.setObjectName("offcut_status")
        self.status.setWordWrap(True)
        self.status.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        box.addWidget(self.status)
        status_row = QHBoxLayout()
        self.start_button = QPushButton(_("Start"))
        self.start_button.setObjectName("offcut_start")
        self.start_button.setToolTip(_("Start the Offcut sidecar (or connect to a running one)."))
        self.start_button.clicked.connect(self.ctl.start)
        self.stop_button = QPushButton(_("Stop"))
        self.stop_button.setObjectName("offcut_stop")
        self.stop_button.setToolTip(_("Stop the sidecar and free its memory."))
        self.stop_button.clicked.connect(self.ctl.stop)
        status_row.addStretch(1)
        status_row.addWidget(self.start_button)
        status_row.addWidget(self.stop_button)
        box.addLayout(status_row)
        box.addStretch(1)
        self.setWidget(root)

    # -- controller → widgets ---------------------------------------------------------------

    def _fill_models(self):
        """Default, then the sidecar's aliases (Fast, Best quality), then the installed models.

        Each entry's data is what the request sends as ``model``: "" (the sidecar's default),
        an alias name the sidecar resolves, or a model name; a saved choice that vanished
        stays visible.
        """
        installed = [m for m in self.ctl.models if m.get("installed")]
        default = next((m["name"] for m in self.ctl.models if m.get("default")), None)
        self.model.blockSignals(True)
        self.model.clear()
        self.model.addItem(_("Default ({model})", model=default) if default else _("Default"), "")
        for alias in self._aliases():
            label, tooltip = _ALIAS_TEXT.get(alias["name"], (None, None))
            label = _(label) if label else alias.get("label") or alias["name"]
            tooltip = _(tooltip) if tooltip else alias.get("description") or ""
            if alias.get("model"):
                tooltip = _(
                    "{description} Uses {model}.", description=tooltip, model=alias["model"]
                )
            self.model.addItem(label, alias["name"])
            self.model.setItemData(self.model.count() - 1, tooltip, Qt.ItemDataRole.ToolTipRole)
        for m in installed:
            self.model.addItem(m["name"], m["name"])
            self.model.setItemData(
                self.model.count() - 1, m.get("description") or "", Qt.ItemDataRole.ToolTipRole
            )
        chosen = self.ctl.settings.model or ""
        if chosen and self.model.findData(chosen) < 0:
            self.model.addItem(_("{model} (not installed?)", model=chosen), chosen)
        self.model.setCurrentIndex(max(0, self.model.findData(chosen)))
        self.model.blockSignals(False)
        if self.ctl.models and not installed:
            self._show_message(
                "error",
                _(
                    "No model is installed. In a terminal run `offcut models fetch u2netp`, "
                    "then press Start."
                ),
                "",
            )

    def _aliases(self):
        """The aliases the sidecar announced whose model is installed, in its order."""
        aliases = self.ctl.hello.get("aliases") if isinstance(self.ctl.hello, dict) else None
        return [
            a
            for a in aliases or []
            if isinstance(a, dict) and a.get("name") and a.get("installed", True)
        ]

    def _show_settings(self):
        s = self.ctl.settings
        for widget, value in ((self.refine, s.refine), (self.decontaminate, s.decontaminate)):
            widget.blockSignals(True)
            widget.setChecked(value)
            widget.blockSignals(False)
        self.output.setCurrentIndex(max(0, self.output.findData(s.output)))
        index = self.model.findData(s.model or "")
        if index >= 0:
            self.model.setCurrentIndex(index)
        cutout = s.output == job.OUTPUT_CUTOUT
        self.decontaminate.setEnabled(cutout and not self.ctl.busy)
        self.decontaminate.setToolTip(
            _(
                "Estimate the true colours of edge pixels so hair and fur have no halo of the "
                "old background."
            )
            if cutout
            else _(
                "Only the cutout layer has colours to clean; masks and selections are unaffected."
            )
        )

    def _show_state(self):
        colour, text = _STATE_TEXT.get(self.ctl.state, ("#888888", self.ctl.state))
        text = _(text)
        detail = self.ctl.state_detail
        if detail and self.ctl.state != ctl.STARTING:
            text = _("{state} — {detail}", state=text, detail=detail)
        line = _html(_("Sidecar: {state}", state=text))
        self.status.setText('<span style="color:%s">●</span> %s' % (colour, line))
        self.status.setToolTip(detail or text)
        self.start_button.setEnabled(self.ctl.state in (ctl.STOPPED, ctl.ERROR))
        self.stop_button.setEnabled(self.ctl.state == ctl.CONNECTED and not self.ctl.busy)
        if self.ctl.state == ctl.ERROR and detail:
            self.copy_button.setVisible(True)

    def _show_busy(self, busy):
        for w in (self.run_button, self.model, self.output, self.refine):
            w.setEnabled(not busy)
        self.cancel_button.setEnabled(busy)
        self._show_settings()
        self._show_state()
        if busy:
            self.msg.setText("")
            self.copy_button.setVisible(False)

    def _show_progress(self, stage, fraction):
        self.bar.setValue(round(max(0.0, min(1.0, fraction)) * 1000))
        label = _(_STAGES[stage]) if stage in _STAGES else stage.capitalize()
        self.bar.setFormat("%s %%p%%" % label)  # Qt fills in %p: the percentage
        if stage in ("done", "cancelled", "failed"):
            self.bar.setFormat(_(_STAGES[stage]))

    def _show_message(self, kind, text, details):
        colour = {"error": "#d9534f", "cancelled": "#d4a017"}.get(kind)
        self.msg.setText(
            '<span style="color:%s">%s</span>' % (colour, _html(text)) if colour else _html(text)
        )
        self.msg.setToolTip(details if kind == "error" else "")
        self.copy_button.setVisible(kind == "error")

    # -- widgets → controller ---------------------------------------------------------------

    def _model_chosen(self, index):
        self.ctl.update_settings(model=self.model.itemData(index) or None)

    def _output_chosen(self, index):
        self.ctl.update_settings(output=self.output.itemData(index))

    def _copy_error(self):
        text = self.ctl.last_error or self.ctl.state_detail or self.msg.text()
        QApplication.clipboard().setText(text)
        self.copy_button.setText(_("Copied"))
        QTimer.singleShot(1500, lambda: self.copy_button.setText(_("Copy error")))

    def canvasChanged(self, canvas):
        """Required by Krita's DockWidget; the job always uses the active document."""


def _html(text):
    return (text or "").replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
