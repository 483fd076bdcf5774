"""Test-only Krita plug-in: runs the end-to-end tests' commands inside the real Krita.

``tests/e2e/krita_support.py`` installs this file as the pykrita plug-in ``offcut_e2e_driver``
next to the real Offcut plug-in. Once Krita's first window exists it connects to the test
process over loopback TCP (port in ``OFFCUT_E2E_PORT``) and answers newline-delimited JSON
commands. Pixels travel base64-encoded inside those messages, never through files, so the
tests keep the project's rule that no image data reaches the disk.

Everything here runs on Krita's UI thread, as a plug-in's code does. Commands that must let
Krita's event loop run (the docker's asynchronous job, undo) reply later through a callback.
"""

import base64
import importlib.util
import json
import os
import time
import traceback

from krita import Extension, Krita, Selection

DOCKER_ID = "offcut_docker"


def _plugin_qt():
    """The installed plug-in's own Qt module (``offcut_krita/qt.py``), loaded by its path.

    The driver runs in Krita 5 (PyQt5) and Krita 6 (PyQt6) alike through the plug-in's choice
    of binding. It is loaded as a file because importing ``offcut_krita.qt`` would import the
    package ``offcut_krita`` and so load Offcut even in a profile where Krita does not.
    """
    pykrita = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.path.join(pykrita, "offcut_krita", "qt.py")
    spec = importlib.util.spec_from_file_location("offcut_e2e_driver_qt", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


qt = _plugin_qt()
Qt, QTimer, QApplication, QWidget = qt.Qt, qt.QTimer, qt.QApplication, qt.QWidget
QCheckBox, QComboBox, QLabel = qt.QCheckBox, qt.QComboBox, qt.QLabel
QProgressBar, QPushButton = qt.QProgressBar, qt.QPushButton
QDockWidget, QMenu = qt.QtWidgets.QDockWidget, qt.QtWidgets.QMenu
QtNetwork = qt.module("QtNetwork")


def _b64(data):
    return base64.b64encode(bytes(data)).decode("ascii")


def _unb64(text):
    return base64.b64decode(text.encode("ascii"))


def _offcut():
    """The installed Offcut plug-in's modules, as Krita imported them."""
    import offcut_krita.controller as controller
    import offcut_krita.job as job
    from offcut_krita.offcut_client import Client

    return job, controller, Client


def _tree(node, depth=0):
    out = []
    for child in node.childNodes():
        out.append(
            {
                "name": child.name(),
                "type": child.type(),
                "visible": child.visible(),
                "depth": depth,
                "model": child.colorModel(),
                "bitdepth": child.colorDepth(),
            }
        )
        out += _tree(child, depth + 1)
    return out


class Driver:
    def __init__(self):
        self.sock = QtNetwork.QTcpSocket()
        self.buf = b""
        self.docs = {}
        self.client = None
        self.sock.readyRead.connect(self._read)
        self.sock.disconnected.connect(self._lost)

    # -- transport --------------------------------------------------------------------------

    def start(self):
        # Plug-in dockers start hidden (users open them in Settings ▸ Dockers): show ours.
        dock = self._docker()
        if dock is not None:
            dock.show()
        self.sock.connectToHost("127.0.0.1", int(os.environ["OFFCUT_E2E_PORT"]))
        if not self.sock.waitForConnected(10000):
            print("offcut_e2e_driver: cannot connect:", self.sock.errorString(), flush=True)

    def _lost(self):
        QTimer.singleShot(0, QApplication.instance().quit)

    def _read(self):
        self.buf += bytes(self.sock.readAll())
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            req = json.loads(line.decode("utf-8"))
            self._handle(req)

    def _send(self, rid, ok, payload):
        msg = dict(payload)
        msg.update({"id": rid, "ok": ok})
        self.sock.write(json.dumps(msg).encode("utf-8") + b"\n")
        self.sock.flush()

    def _handle(self, req):
        rid = req.pop("id")
        name = req.pop("cmd")
        fn = getattr(self, "cmd_" + name, None)

        def reply(payload=None, ok=True):
            if self.sock.state() == QtNetwork.QAbstractSocket.SocketState.ConnectedState:
                self._send(rid, ok, payload or {})

        if fn is None:
            reply({"error": f"unknown command {name}"}, ok=False)
            return
        try:
            value = fn(reply=reply, **req)
        except Exception:
            reply({"error": traceback.format_exc()}, ok=False)
            return
        if value is not None:
            reply(value)

    # -- helpers ----------------------------------------------------------------------------

    def _client(self):
        if self.client is None:
            _, _, Client = _offcut()
            self.client = Client(app="krita-e2e", start=False)
        return self.client

    def _window(self):
        return Krita.instance().activeWindow()

    def _docker(self):
        window = self._window()
        for dock in window.qwindow().findChildren(QDockWidget):
            if dock.objectName() == DOCKER_ID:
                return dock
        return None

    def _make_doc(self, spec):
        k = Krita.instance()
        doc = k.createDocument(
            spec["width"],
            spec["height"],
            spec.get("name", "e2e"),
            spec["model"],
            spec["depth"],
            spec.get("profile", ""),
            72.0,
        )
        if doc is None:
            raise RuntimeError(
                "Krita could not create a {} {} document".format(spec["model"], spec["depth"])
            )
        root = doc.rootNode()
        # Drop the white background so outside the subject layer is truly empty.
        for child in root.childNodes():
            child.remove()
        layer = doc.createNode(spec.get("layer_name", "Subject"), "paintlayer")
        lay = spec["layer"]
        layer.setPixelData(_unb64(lay["pixels"]), lay["x"], lay["y"], lay["w"], lay["h"])
        root.addChildNode(layer, None)
        if lay.get("dx") or lay.get("dy"):
            layer.move(
                layer.position().x() + lay.get("dx", 0), layer.position().y() + lay.get("dy", 0)
            )
        doc.waitForDone()
        if spec.get("selection"):
            sel = Selection()
            sel.select(*spec["selection"], 255)
            doc.setSelection(sel)
        doc.setActiveNode(layer)
        if spec.get("group"):
            group = doc.createGroupLayer("Group")
            root.addChildNode(group, None)
            doc.setActiveNode(group)
        if spec.get("view"):
            view = self._window().addView(doc)
            self._window().showView(view)
            k.setActiveDocument(doc)
            QApplication.processEvents()
            # a new view selects its own node: choose ours again, as a user would click it
            doc.setActiveNode(group if spec.get("group") else layer)
            QApplication.processEvents()
        doc.waitForDone()
        self.docs[spec.get("name", "e2e")] = doc
        return doc, layer

    def _outputs(self, doc, layer):
        """Every result the four outputs can leave, read over the whole canvas."""
        w, h = doc.width(), doc.height()
        out = {
            "tree": _tree(doc.rootNode()),
            "layer_visible": layer.visible(),
            "layer_bounds": list(_rect(layer.bounds())),
            "layer_position": [layer.position().x(), layer.position().y()],
        }
        masks = [c for c in layer.childNodes() if c.type() == "transparencymask"]
        if masks:
            out["mask"] = _b64(masks[-1].pixelData(0, 0, w, h))
            out["mask_name"] = masks[-1].name()
        siblings = layer.parentNode().childNodes()
        new = [n for n in siblings if n.uniqueId() != layer.uniqueId() and n.type() == "paintlayer"]
        if new:
            top = new[-1]
            out["layer"] = _b64(top.pixelData(0, 0, w, h))
            out["layer_name"] = top.name()
            out["layer_model"] = [top.colorModel(), top.colorDepth(), top.colorProfile()]
        sel = doc.selection()
        if sel is not None:
            out["selection"] = _b64(sel.pixelData(0, 0, w, h))
        return out

    # -- commands ---------------------------------------------------------------------------

    def _menus_holding(self, text):
        qwin = self._window().qwindow()
        return [
            m.title()
            for m in qwin.findChildren(QMenu)
            if any(a.text() == text for a in m.actions())
        ]

    def cmd_hello(self, reply):
        _job, _controller, _Client = _offcut()
        import offcut_krita.qt as plugin_qt

        return {
            "krita": Krita.instance().version(),
            "qt": plugin_qt.QtCore.qVersion(),
            "binding": plugin_qt.BINDING,
            "pyqt": plugin_qt.QtCore.PYQT_VERSION_STR,
            "windows": len(Krita.instance().windows()),
            "docker": self._docker() is not None,
            "action": Krita.instance().action("offcut_remove_background") is not None,
            "shortcut": Krita.instance().action("offcut_remove_background").shortcut().toString(),
            "menus": self._menus_holding("Remove Background (Offcut)"),
            "transport": self._client().transport_name,
        }

    def cmd_scenario(self, reply, doc, settings, keep=False, limits=None, with_plan=False):
        """Build a document, run the plug-in's own job code on it, return what it wrote.

        ``with_plan`` also returns the pixels the job sends, for layers Krita converts first
        (CMYK, Lab), whose RGB the test cannot compute itself.
        """
        job, _, _ = _offcut()
        document, layer = self._make_doc(doc)
        node = layer
        if doc.get("active"):
            node = document.nodeByName(doc["active"])
        try:
            s = job.Settings(**settings)
            planned = {}
            if with_plan:
                plan = job.plan_job(document, node, s)
                planned = {
                    "plan_pixels": _b64(plan.pixels),
                    "converted_from": plan.converted_from,
                }
            t0 = time.monotonic()
            try:
                outcome = job.run_job(document, node, s, self._client(), limits=limits)
            except job.JobError as exc:
                return {
                    "job_error": exc.message,
                    "code": exc.code,
                    "tree": _tree(document.rootNode()),
                }
            result = {
                "seconds": time.monotonic() - t0,
                "region": list(outcome.plan.region),
                "fmt": outcome.plan.fmt,
                "colorspace": outcome.plan.colorspace,
                "summary": outcome.summary(),
                "profile": layer.colorProfile(),
                "transport": self._client().transport_name,
            }
            result.update(planned)
            result.update(self._outputs(document, layer))
            return result
        finally:
            if not keep:
                document.setModified(False)
                document.close()

    def cmd_special_layer(self, reply, kind):
        """Run the job on a group, file, clone or vector layer: it must refuse in words."""
        job, _, _ = _offcut()
        k = Krita.instance()
        doc = k.createDocument(64, 48, "special", "RGBA", "U8", "", 72.0)
        root = doc.rootNode()
        base = doc.createNode("Paint", "paintlayer")
        base.setPixelData(b"\x10\x20\x30\xff" * 16, 0, 0, 4, 4)
        root.addChildNode(base, None)
        if kind == "grouplayer":
            node = doc.createGroupLayer("Group")
        elif kind == "filelayer":
            node = doc.createFileLayer("File", "/nonexistent.png", "None")
        elif kind == "clonelayer":
            node = doc.createCloneLayer("Clone", base)
        elif kind == "vectorlayer":
            node = doc.createVectorLayer("Vector")
        else:
            raise ValueError(kind)
        root.addChildNode(node, None)
        doc.waitForDone()
        try:
            job.run_job(doc, node, job.Settings(), self._client())
        except job.JobError as exc:
            return {"job_error": exc.message, "code": exc.code, "type": node.type()}
        finally:
            doc.setModified(False)
            doc.close()
        return {"job_error": None, "type": node.type()}

    def cmd_undo(self, reply, doc, settings):
        """Run a job in a document shown in a view, then undo and redo through Krita's actions."""
        job, _, _ = _offcut()
        document, layer = self._make_doc(dict(doc, view=True))
        k = Krita.instance()
        steps = {"before": _tree(document.rootNode())}
        job.run_job(document, layer, job.Settings(**settings), self._client())
        steps["after"] = _tree(document.rootNode())
        steps["selection_after"] = document.selection() is not None
        steps["undo_text"] = k.action("edit_undo").text()
        k.action("edit_undo").trigger()
        document.waitForDone()
        steps["undone"] = _tree(document.rootNode())
        steps["selection_undone"] = document.selection() is not None
        k.action("edit_redo").trigger()
        document.waitForDone()
        steps["redone"] = _tree(document.rootNode())
        steps["selection_redone"] = document.selection() is not None

        def close():
            document.setModified(False)
            document.close()
            reply(steps)

        # Let Krita finish what the redo started first, as it has when a user closes the
        # document: Krita 6.0.4 crashes when a document closes right after the redo of a
        # selection (it still works on the selection's outline in the view).
        QTimer.singleShot(1000, close)
        return None

    def cmd_docker(self, reply):
        """The docker's widgets as the user sees them."""
        dock = self._docker()
        if dock is None:
            return {"present": False}
        out = {"present": True, "title": dock.windowTitle(), "visible": dock.isVisible()}
        for w in dock.findChildren(QWidget):
            name = w.objectName()
            if not name.startswith("offcut_"):
                continue
            # shown as far as the docker is concerned (the docker itself may be tabbed away)
            entry = {"enabled": w.isEnabled(), "visible": not w.isHidden()}
            if isinstance(w, QComboBox):
                entry["items"] = [w.itemText(i) for i in range(w.count())]
                entry["data"] = [w.itemData(i) for i in range(w.count())]
                entry["current"] = w.currentData()
            elif isinstance(w, (QLabel, QPushButton)):
                entry["text"] = w.text()
            elif isinstance(w, QCheckBox):
                entry["checked"] = w.isChecked()
                entry["text"] = w.text()
            elif isinstance(w, QProgressBar):
                entry["value"] = w.value()
                entry["format"] = w.format()
            out[name] = entry
        _, controller, _ = _offcut()
        ctl = controller.get()
        out["state"] = ctl.state
        out["busy"] = ctl.busy
        out["settings"] = ctl.settings.as_dict()
        out["last_error"] = ctl.last_error
        out["clipboard"] = QApplication.clipboard().text()
        return out

    def cmd_docker_set(self, reply, output=None, model=None, refine=None, decontaminate=None):
        """Change settings through the docker's own widgets, as a user would."""
        dock = self._docker()
        if output is not None:
            combo = dock.findChild(QComboBox, "offcut_output")
            combo.setCurrentIndex(combo.findData(output))
            combo.activated.emit(combo.currentIndex())
        if model is not None:
            combo = dock.findChild(QComboBox, "offcut_model")
            combo.setCurrentIndex(combo.findData(model))
            combo.activated.emit(combo.currentIndex())
        for name, value in (("offcut_refine", refine), ("offcut_decontaminate", decontaminate)):
            if value is not None:
                dock.findChild(QCheckBox, name).setChecked(value)
        return self.cmd_docker(reply)

    def cmd_docker_click(self, reply, button, wait_state=None, timeout=30.0):
        """Click one of the docker's buttons; optionally wait for a sidecar state."""
        dock = self._docker()
        dock.findChild(QPushButton, button).click()
        if not wait_state:
            return self.cmd_docker(reply)
        _, controller, _ = _offcut()
        ctl = controller.get()
        deadline = time.monotonic() + timeout

        def check():
            if ctl.state in wait_state or time.monotonic() > deadline:
                reply(self.cmd_docker(reply))
            else:
                QTimer.singleShot(50, check)

        QTimer.singleShot(0, check)
        return None

    def cmd_async_run(self, reply, doc, settings, via="action", cancel_at=None, close_doc=True):
        """Run a job the way a user does (action or docker button) and watch the UI meanwhile.

        A 10 ms timer measures the longest gap between its ticks while the job runs: if Krita's
        UI thread were blocked on the sidecar, that gap would be the job's length.
        """
        _, controller, _ = _offcut()
        ctl = controller.get()
        ctl.update_settings(**settings)
        document, layer = self._make_doc(dict(doc, view=True))
        dock = self._docker()
        run_button = dock.findChild(QPushButton, "offcut_run") if dock else None
        cancel_button = dock.findChild(QPushButton, "offcut_cancel") if dock else None
        state = {
            "ticks": 0,
            "max_gap": 0.0,
            "last": time.monotonic(),
            "busy_seen": False,
            "button_disabled_while_busy": None,
            "action_disabled_while_busy": None,
            "stages": [],
            "messages": [],
            "cancel_sent": False,
            "done": False,
        }
        action = Krita.instance().action("offcut_remove_background")

        def tick():
            now = time.monotonic()
            state["max_gap"] = max(state["max_gap"], now - state["last"])
            state["last"] = now
            state["ticks"] += 1

        timer = QTimer()
        timer.setInterval(10)
        timer.timeout.connect(tick)

        def on_progress(stage, fraction):
            state["stages"].append([stage, fraction])
            if ctl.busy:
                state["busy_seen"] = True
                if run_button is not None:
                    state["button_disabled_while_busy"] = not run_button.isEnabled()
                state["action_disabled_while_busy"] = not action.isEnabled()
            if cancel_at and stage == cancel_at and not state["cancel_sent"]:
                state["cancel_sent"] = True
                state["cancel_at_s"] = time.monotonic() - state["t0"]
                if cancel_button is not None and cancel_button.isEnabled():
                    cancel_button.click()
                else:
                    ctl.cancel()

        def on_message(kind, text, details):
            state["messages"].append([kind, text])

        def on_busy(busy):
            if busy or state["done"]:
                return
            state["done"] = True
            state["seconds"] = time.monotonic() - state["t0"]
            timer.stop()
            ctl.progress.disconnect(on_progress)
            ctl.message.disconnect(on_message)
            ctl.busy_changed.disconnect(on_busy)
            payload = {k: v for k, v in state.items() if k not in ("last",)}
            payload.update(self._outputs(document, layer))
            payload["region"] = None
            if close_doc:
                document.setModified(False)
                document.close()
            reply(payload)

        ctl.progress.connect(on_progress)
        ctl.message.connect(on_message)
        ctl.busy_changed.connect(on_busy)

        def go():
            # A new view settles its active node asynchronously; then act as the user does.
            document.setActiveNode(document.nodeByName("Group" if doc.get("group") else "Subject"))
            state["t0"] = time.monotonic()
            state["last"] = state["t0"]
            timer.start()
            if via == "action":
                action.trigger()
            else:
                run_button.click()
            if not ctl.busy:  # refused before starting (e.g. a group layer): report at once
                on_busy(False)

        QTimer.singleShot(300, go)
        return None

    def cmd_screenshot_setup(self, reply, doc, settings):
        """Leave a document with a result on screen and the docker visible for a screenshot."""
        _, controller, _ = _offcut()

        window = self._window()
        qwin = window.qwindow()
        # No window manager runs under Xvfb, so "maximised" means setting the geometry.
        screen = QApplication.primaryScreen().geometry()
        qwin.setGeometry(screen)
        dock = self._docker()
        dock.show()
        dock.raise_()
        layers = [d for d in qwin.findChildren(QDockWidget) if d.objectName() == "KisLayerBox"]
        qwin.resizeDocks([*layers, dock], [300, 420][: len(layers) + 1], Qt.Orientation.Vertical)
        ctl = controller.get()
        ctl.update_settings(**settings)
        document, layer = self._make_doc(dict(doc, view=True))

        def go():
            document.setActiveNode(layer)
            ctl.run_active()

        QTimer.singleShot(300, go)

        def wait():
            if ctl.busy:
                QTimer.singleShot(100, wait)
                return
            QTimer.singleShot(1500, lambda: reply(self.cmd_docker(reply)))

        QTimer.singleShot(600, wait)
        return None

    def cmd_start_job_and_quit(self, reply, doc, settings):
        """Start a slow job, then quit Krita the way a user does while it runs."""
        _, controller, _ = _offcut()
        ctl = controller.get()
        ctl.update_settings(**settings)
        document, layer = self._make_doc(dict(doc, view=True))
        state = {}

        def go():
            document.setActiveNode(layer)
            ctl.run_active()
            state["busy"] = ctl.busy

        QTimer.singleShot(300, go)

        def quit_when_working(stage, fraction):
            if stage == "inference" and not state.get("quitting"):
                state["quitting"] = True
                state["t"] = time.time()
                for d in Krita.instance().documents():
                    d.setModified(False)
                reply(dict(state))
                QTimer.singleShot(0, lambda: Krita.instance().action("file_quit").trigger())

        ctl.progress.connect(quit_when_working)
        return None

    def cmd_run_file(self, reply, path, args=None):
        """Run a Python file inside Krita, on the UI thread, that replies when it is done.

        The benchmark's timing script (bench/krita_timing.py) comes this way, as GIMP's comes
        through ``gimp-console``: it gets this driver, ``reply`` and ``args`` as globals.
        """
        with open(path, encoding="utf-8") as f:
            code = compile(f.read(), path, "exec")
        env = {"__name__": "offcut_e2e_run_file", "driver": self, "reply": reply, "qt": qt}
        env["args"] = args or {}
        exec(code, env)
        return None

    def cmd_eval(self, reply, code):
        """Evaluate an expression inside Krita (for debugging a failing test by hand)."""
        env = {"Krita": Krita, "driver": self, "QApplication": QApplication}
        return {"value": repr(eval(code, env))}

    def cmd_quit(self, reply):
        for d in Krita.instance().documents():
            d.setModified(False)
        reply({})
        QTimer.singleShot(100, lambda: Krita.instance().action("file_quit").trigger())
        return None


def _rect(r):
    return (r.x(), r.y(), r.width(), r.height())


_DRIVER = None


class DriverExtension(Extension):
    def setup(self):
        pass

    def createActions(self, window):
        global _DRIVER
        if _DRIVER is None:
            _DRIVER = Driver()
            QTimer.singleShot(500, _DRIVER.start)


Krita.instance().addExtension(DriverExtension(Krita.instance()))
