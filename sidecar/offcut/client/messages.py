"""The sentences of errors a user can meet, each under a stable key with named parameters.

An error travels as a code (what kind of failure, docs/protocol.md), a message key and its
parameters, and the English sentence. The plug-in renders the key in the editor's language
(:func:`text`); the English ``message`` stays for logs, old clients and unknown keys. Keys are
written once, here, for the sidecar and the client alike (the sidecar imports this module).

Each template is marked with ``N_`` for the ``client`` catalog and uses named ``{placeholders}``
that the parameters fill; a parameter is a short value (a model name, a number, a format), never
pixel data or a user's path.
"""

from typing import Any, Dict, Mapping, Optional, Tuple

from .i18n import N_, _

#: key -> English template. Add a key here, raise it with its parameters (the sidecar's
#: ``offcut.errors.error``/``bad_request``, the client's ``errors.error``), run
#: ``python -m offcut.i18n update``, and translate it in po/client/<lang>.po. Keys are part of
#: the protocol (docs/protocol.md): never reuse one for another sentence; a changed sentence
#: keeps its key only while its parameters stay the same.
MESSAGES: Dict[str, str] = {
    # -- sent by the sidecar: the request and its validation (offcut.server.protocol) ----------
    "header_too_large": N_("The request header is larger than {limit} bytes."),
    "header_not_msgpack": N_("The request header is not valid msgpack; update the plug-in."),
    "header_not_map": N_("The request header must be a msgpack map with string keys."),
    "no_header": N_("A request needs a header frame."),
    "routing_id": N_("This sidecar assigns routing ids itself; connect without ZMQ_ROUTING_ID."),
    "token_mismatch": N_(
        "The request's token does not match this sidecar's; the plug-in will reconnect using "
        "the current connection file."
    ),
    "unsupported_version": N_(
        "This sidecar speaks protocol version {version} but the request used {used}; update "
        "Offcut so the plug-in and the sidecar match (`offcut install gimp|krita`)."
    ),
    "bad_id": N_("The request needs an 'id': a string of 1 to {limit} characters."),
    "unknown_op": N_("Unknown operation {op}; this sidecar knows: {ops}."),
    "bad_integer": N_("'{name}' must be an integer from {low} to {high}."),
    "bad_option": N_("Option '{name}' must be true or false."),
    "bad_image": N_("'image' must be a map with width, height, format and colorspace."),
    "image_too_large": N_(
        "The image is {width}x{height} pixels; this sidecar accepts at most {max_pixels} pixels "
        "and {max_side} per side. Select a smaller area or scale the image down, or restart the "
        "sidecar with a larger --max-pixels."
    ),
    "bad_colorspace": N_("'image.colorspace' must be one of {choices}."),
    "buffer_count": N_(
        "A segment request carries exactly one pixel buffer after the header; got {count}."
    ),
    "bad_roi": N_("'roi' must be a map with x, y, w, h."),
    "bad_model": N_("'model' must be a model name (see the `models` op)."),
    "bad_options": N_("'options' must be a map."),
    "bad_mask_format": N_("'mask_format' must be one of {choices}."),
    "bad_threshold": N_("'threshold' must be empty or a number from 0 to 1."),
    "bad_cancel": N_("'cancel' needs 'target': the id of the request to cancel."),
    "unsupported_format": N_("Pixel format {format} is not supported; use one of: {choices}."),
    "buffer_size": N_(
        "The pixel buffer has {size} bytes but a {width}x{height} {format} image needs "
        "{expected}; send tightly packed rows with no padding."
    ),
    "duplicate_id": N_("A request with id {id} is already in flight."),
    # -- sent by the sidecar: its queue, cancelling, its own failures -------------------------
    "queue_full": N_(
        "The sidecar already has {count} images waiting; try again when one of them is done."
    ),
    "connection_full": N_(
        "This connection already has as many pixels in flight as the sidecar holds for one "
        "client; wait for its earlier images to finish."
    ),
    "request_cancelled": N_("The request was cancelled."),
    "shutting_down": N_("The sidecar is shutting down; the request was cancelled."),
    "out_of_memory": N_(
        "The sidecar ran out of memory for this image; select a smaller area or scale the "
        "image down."
    ),
    "internal_error": N_(
        "The sidecar hit an internal error; it is still running. Please report this with "
        "`offcut doctor` output."
    ),
    "internal_error_image": N_(
        "The sidecar hit an internal error while processing the image; it is still running. "
        "Please report this."
    ),
    "provider_unavailable": N_(
        "Execution provider {provider} was requested (OFFCUT_PROVIDER) but this ONNX Runtime "
        "only has {available}; unset OFFCUT_PROVIDER or install the right onnxruntime build."
    ),
    "inference_failed": N_(
        "ONNX Runtime failed while running {model} ({error}); try again, and report a bug if "
        "it keeps happening."
    ),
    # -- sent by the sidecar: models ---------------------------------------------------------
    "unknown_model": N_("Unknown model {model}. Known models: {known}. Run `offcut models list`."),
    "model_not_installed": N_("Model {model} is not installed: run `offcut models fetch {model}`."),
    "model_unverified": N_(
        "Model {model} is unverified: the catalog has no confirmed checksum for it and you have "
        "not confirmed this file. Run `offcut models fetch {model} --trust` (or `offcut models "
        "import {model} FILE --trust`) to accept it."
    ),
    "model_checksum": N_(
        "Model {model} failed its checksum (sha256 {sha256}, expected {expected}); run "
        "`{command}` to download it again."
    ),
    "model_load_failed": N_(
        "Model {model} could not be loaded by ONNX Runtime ({error}); run "
        "`offcut models fetch {model}` to download it again."
    ),
    "catalog_invalid": N_("The model catalog is invalid: {where}: {problem}."),
    # -- raised by the client: finding, starting and reaching the sidecar ---------------------
    "client_closed": N_("This Offcut client was closed."),
    "not_running": N_("The Offcut sidecar is not running; start it with `offcut serve`."),
    "no_sidecar_command": N_(
        "Offcut does not know how to start its sidecar: reinstall the plug-in with "
        "`offcut install gimp` or `offcut install krita`, or start `offcut serve` yourself."
    ),
    "bad_command_variable": N_("{variable} must be a JSON array of strings ({problem})"),
    "record_damaged": N_(
        "The sidecar record {path} is damaged ({problem}): reinstall the plug-in with "
        "`offcut install`."
    ),
    "cannot_start": N_(
        "Cannot start the Offcut sidecar ({command}): {error}. Reinstall the plug-in with "
        "`offcut install`."
    ),
    "cancelled_starting": N_("Cancelled while the sidecar was starting."),
    "start_exited": N_(
        "The Offcut sidecar ({command}) exited with status {status} before it was ready. "
        "It printed nothing."
    ),
    "start_exited_output": N_(
        "The Offcut sidecar ({command}) exited with status {status} before it was ready.\n"
        "Its last output:\n{output}"
    ),
    "start_timeout": N_(
        "The Offcut sidecar ({command}) did not report ready within {seconds} s. "
        "It printed nothing."
    ),
    "start_timeout_output": N_(
        "The Offcut sidecar ({command}) did not report ready within {seconds} s.\n"
        "Its last output:\n{output}"
    ),
    "ready_file_missing": N_(
        "The Offcut sidecar reported ready but its connection file {path} is missing."
    ),
    "ready_file_other": N_(
        "The Offcut sidecar reported ready but its connection file {path} is another sidecar's."
    ),
    "no_answer": N_("The Offcut sidecar (pid {pid}) started but does not answer: {reason}."),
    "no_answer_output": N_(
        "The Offcut sidecar (pid {pid}) started but does not answer: {reason}.\n"
        "Its last output:\n{output}"
    ),
    "credentials_refused": N_(
        "The Offcut sidecar (pid {pid}) refused this plug-in's credentials: the token in {path} "
        "is not the one it expects. End that sidecar process and try again; the next call "
        "starts a fresh one."
    ),
    "sidecar_full": N_(
        "The Offcut sidecar (pid {pid}) did not admit this connection; it may have as many "
        "connections open as it allows. Close Offcut in editors or scripts you no longer use, "
        "or try again in a moment."
    ),
    "protocol_mismatch": N_(
        "The Offcut sidecar speaks protocol {protocol} but this plug-in speaks {ours}: install "
        "the same Offcut version for both (`offcut install`)."
    ),
    "connection_file_not_regular": N_(
        "The Offcut connection file {path} is not a regular file; remove it and try again."
    ),
    "connection_file_owner": N_(
        "The Offcut connection file {path} belongs to another user (uid {uid}); remove it and "
        "try again."
    ),
    "connection_file_mode": N_(
        "The Offcut connection file {path} can be read by other users (mode {mode}); remove it "
        "and try again."
    ),
    "connection_file_invalid": N_(
        "The Offcut connection file {path} is not valid ({problem}); remove it and try again."
    ),
    "runtime_dir_relative": N_(
        "The Offcut runtime directory {path} is not an absolute path; set OFFCUT_RUNTIME_DIR to "
        "a folder in your user profile."
    ),
    "runtime_dir_outside": N_(
        "The Offcut runtime directory {path} is outside your user profile ({profile}), where "
        "other users may be able to write; set OFFCUT_RUNTIME_DIR to a folder inside it, or "
        "unset it."
    ),
    "bad_transport_variable": N_("{variable} must be auto, pyzmq or builtin, not {value}"),
    "pyzmq_missing": N_("{variable}=pyzmq but pyzmq or msgpack cannot be imported"),
    # -- raised by the client: a call that did not complete ------------------------------------
    "cancelled": N_("Cancelled."),
    "sidecar_silent": N_(
        "The Offcut sidecar{pid} sent nothing for {seconds} s during `{op}`; it may be "
        "overloaded or stuck. Try again; if it keeps happening, end the sidecar process."
    ),
    "sidecar_stopped": N_(
        "The Offcut sidecar{pid} stopped while working on this request: {reason}. Try again: a "
        "new sidecar will be started."
    ),
    "connection_lost": N_(
        "Lost the connection to the Offcut sidecar{pid} during `{op}`: {reason}. Try again: a "
        "new sidecar will be started."
    ),
    "call_timeout": N_("The sidecar did not finish `{op}` within {seconds} s; it was cancelled."),
    "bad_pixels": N_("The pixels must be a contiguous bytes-like buffer ({error})."),
    "pixels_size": N_(
        "The pixel buffer has {size} bytes but a {width}×{height} {format} image needs {expected}."
    ),
    "too_large_for_sidecar": N_(
        "The image is too large for the sidecar: {size} bytes, the limit is {limit}. Use a "
        "smaller image or selection."
    ),
    # -- raised by the client: a reply it cannot use ------------------------------------------
    "sidecar_error": N_("The sidecar reported an error."),
    "unknown_reply": N_("The sidecar sent a reply of unknown kind {kind}."),
    "malformed_header": N_("The sidecar sent a malformed header."),
    "header_not_a_map": N_("The sidecar sent a header that is not a map."),
    "no_mask": N_("The sidecar's segment result has no mask."),
    "no_cutout": N_("The sidecar's segment result has no cutout."),
    "mask_size": N_(
        "The sidecar's mask has {size} bytes, not the {expected} its header announces."
    ),
    "cutout_size": N_(
        "The sidecar's cutout has {size} bytes, not the {expected} its header announces."
    ),
}


#: The types a parameter may have on the wire; anything else is dropped (:func:`wire_params`).
PARAM_TYPES = (str, int, float)


def wire_params(key: Any, params: Any) -> Tuple[Optional[str], Dict[str, Any]]:
    """``(key, params)`` from an error reply, or ``(None, {})`` when either is malformed.

    The reply comes from another process, possibly a newer or a broken one: a key that is not
    a string, or parameters that are not a map of string names to strings and numbers, are
    dropped, and the error falls back to the English ``message`` it carries.
    """
    if not isinstance(key, str) or not key:
        return None, {}
    if params is None:
        params = {}
    if not isinstance(params, dict):
        return None, {}
    for name, value in params.items():
        if not isinstance(name, str) or isinstance(value, bool):
            return None, {}
        if not isinstance(value, PARAM_TYPES):
            return None, {}
    return key, dict(params)


def english(key: str, params: Optional[Mapping[str, Any]] = None) -> str:
    """The English sentence of ``key`` (the ``message`` an error carries with it)."""
    return MESSAGES[key].format(**dict(params or {}))


def text(key: Optional[str], params: Optional[Mapping[str, Any]], fallback: str) -> str:
    """The sentence of ``key`` in the user's language, else ``fallback`` (the English message).

    An unknown key (a newer sidecar) or parameters that do not fit the template give the
    fallback: the user always gets the sentence the sidecar wrote.
    """
    template = MESSAGES.get(key or "")
    if template is None:
        return fallback
    try:
        template.format(**dict(params or {}))  # the parameters fit the English sentence
    except (KeyError, IndexError, ValueError, TypeError):
        return fallback
    return _(template, **dict(params or {}))
