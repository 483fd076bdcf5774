#!/usr/bin/env python3
"""A GIMP 3 plug-in that does nothing: the floor of any Python plug-in's PDB call.

bench/gimp.py installs it next to Offcut's plug-in and calls it in the same GIMP, interleaved
with Offcut's runs, so the time GIMP itself needs to start a Python plug-in process, register
its procedure and tear it down is measured rather than guessed. It imports only what any GIMP
Python plug-in must (``gi``, ``Gimp``).
"""

import sys

import gi

gi.require_version("Gimp", "3.0")
from gi.repository import Gimp, GLib  # noqa: E402 - after require_version

PROC_NAME = "plug-in-offcut-bench-noop"


def _run(procedure, run_mode, image, drawables, config, data):
    return procedure.new_return_values(Gimp.PDBStatusType.SUCCESS, GLib.Error())


class Noop(Gimp.PlugIn):
    def do_query_procedures(self):
        return [PROC_NAME]

    def do_set_i18n(self, name):
        return False

    def do_create_procedure(self, name):
        procedure = Gimp.ImageProcedure.new(self, name, Gimp.PDBProcType.PLUGIN, _run, None)
        procedure.set_image_types("*")
        return procedure


if __name__ == "__main__":
    Gimp.main(Noop.__gtype__, sys.argv)
