"""The web page (Gradio): FABRIC rounds with likes and dislikes, and tune mode.

Every handler catches errors: a library error (:class:`~fabric.errors.FabricOptError`: a missing
model, an unreadable upload, an impossible parameter) becomes a one-line message in the page's
status box, anything else a short "internal error" line (the traceback goes to the server's
log), and nothing else on the page changes, so no input or state is lost. Gradio's telemetry and
version check are off (``GRADIO_ANALYTICS_ENABLED=False``, ``analytics_enabled=False``), the page
uses Gradio's bundled fonts, and server-side rendering (a Node.js process) is off.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fabric.errors import FabricOptError, InvalidParameterError
from fabric.params import FabricParams
from fabric_opt_app.backend import AppBackend, user_message
from fabric_opt_app.config import AppConfig
from fabric_opt_app.session import Round, RoundSettings, RoundsSession

if TYPE_CHECKING:
    import gradio as gr

__all__ = ["build_ui", "serve", "PARAM_FIELDS", "MAX_OPTIONS"]

logger = logging.getLogger(__name__)

PARAM_FIELDS = tuple(f.name for f in dataclasses.fields(FabricParams))
MAX_OPTIONS = 4  # presets per query the page can show
_LETTERS = "ABCDEFGH"
_FORMATS = ("json", "a1111", "comfyui", "diffusers")
CSS = """
#round-gallery img, #references img, .tune-option img { image-rendering: pixelated; }
#status, #tune-status { min-height: 1.5em; }
.fabric-error { color: #b91c1c; font-weight: 600; }
"""


def _offline_gradio() -> Any:
    """Import gradio with its telemetry, version check and hub telemetry off."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    import gradio as gr

    return gr


def _error(exc: BaseException) -> str:
    if not isinstance(exc, FabricOptError):  # user errors are expected: no traceback
        logger.exception("handler failed")
    return f'<span class="fabric-error">⚠ {_escape(user_message(exc))}</span>'


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "all" if value is None else str(value)


def params_line(params: FabricParams) -> str:
    """Every FABRIC parameter as ``name value`` pairs, for the page."""
    return ", ".join(f"{k} {_fmt(v)}" for k, v in params.to_dict().items())


def round_text(r: Round) -> str:
    s = r.settings
    seeds = f"{s.seeds[0]}–{s.seeds[-1]}" if len(s.seeds) > 1 else str(s.seeds[0])
    refs = []
    if r.liked:
        refs.append("liked: " + "; ".join(r.liked))
    if r.disliked:
        refs.append("disliked: " + "; ".join(r.disliked))
    return (
        f"**Round {r.number}** · model `{r.model}` · seeds {seeds} ({', '.join(map(str, s.seeds))}) · "
        f"preset {_escape(s.preset)} · {r.seconds:.1f} s  \n"
        f"prompt: {_escape(s.prompt)!r}"
        + (f" · negative: {_escape(s.negative_prompt)!r}" if s.negative_prompt else "")
        + f"  \nparameters: {params_line(s.params)}  \n"
        + f"references used: {' · '.join(refs) if refs else 'none (a round without feedback)'}"
    )


def history_text(session: RoundsSession) -> str:
    if not session.rounds:
        return "No rounds yet."
    rows = ["| round | seeds | preset | parameters | references used | marks |", "|---|---|---|---|---|---|"]
    for r in session.rounds:
        marks = [
            f"{i + 1} {session.mark_of(r.number, i)}" for i in range(len(r.images)) if session.mark_of(r.number, i)
        ]
        refs = len(r.liked) + len(r.disliked)
        rows.append(
            f"| {r.number} | {', '.join(map(str, r.settings.seeds))} | {_escape(r.settings.preset)} | "
            f"{params_line(r.settings.params)} | {len(r.liked)} liked, {len(r.disliked)} disliked"
            f"{'' if refs else ''} | {', '.join(marks) or '–'} |"
        )
    return "\n".join(rows)


def gallery_items(session: RoundsSession) -> list[tuple[Any, str]]:
    r = session.last
    if r is None:
        return []
    items = []
    for i, (image, seed) in enumerate(zip(r.images, r.settings.seeds)):
        mark = session.mark_of(r.number, i)
        items.append((image, f"image {i + 1} · seed {seed}" + (f" · {mark}" if mark else "")))
    return items


def reference_items(session: RoundsSession) -> list[tuple[Any, str]]:
    liked_first = sorted(session.references(), key=lambda ref: ref.mark != "liked")
    return [(session._image(ref.round, ref.image), f"{ref.mark}: {ref.label}") for ref in liked_first]


def recommendation_text(tuner: Any) -> str:
    rec = tuner.recommendation()
    answered = len(tuner.tuner.answered)
    if rec is None:
        return "No answers yet: the recommendation appears after the first one."
    util = (
        ""
        if rec.method != "posterior_mean"
        else f" (posterior mean utility {rec.best.utility:.3f} ± {rec.best.utility_std:.3f})"
    )
    return (
        f"**Recommended preset after {answered} answers**{util}, chosen by {rec.method.replace('_', ' ')} "
        f"among {len(rec.ranked)} presets shown:  \n{params_line(rec.params)}"
    )


def build_ui(backend: AppBackend) -> gr.Blocks:
    """The page. ``backend`` does the work; the page only turns clicks into calls."""
    gr = _offline_gradio()
    config = backend.config
    choices = [c.label for c in backend.preset_choices()]
    defaults = FabricParams.paper()

    # delete_cache: the images Gradio copies to its cache folder go after a day (checked hourly)
    with gr.Blocks(title="fabric-opt: FABRIC rounds", analytics_enabled=False, delete_cache=(3600, 86400)) as demo:
        session_id = gr.State(None)
        query_index = gr.State(None)
        gr.Markdown(
            "# FABRIC rounds\nGenerate a round, click images to like or dislike them, and the next round uses them as "
            "references. **Tune** compares presets on your references and learns which you prefer."
        )
        with gr.Tabs():
            # ---- Rounds -----------------------------------------------------------------------
            with gr.Tab("Rounds", id="rounds-tab"):
                with gr.Row():
                    model = gr.Textbox(config.model, label="Model (toy, tiny, a hub id or a path)", elem_id="model")
                    n_images = gr.Number(
                        config.n_images,
                        label="Images per round",
                        precision=0,
                        minimum=1,
                        maximum=16,
                        elem_id="n-images",
                    )
                    seed = gr.Number(0, label="Seed of image 1 (image i: seed + i - 1)", precision=0, elem_id="seed")
                    keep_seeds = gr.Checkbox(False, label="Same seeds next round", elem_id="keep-seeds")
                prompt = gr.Textbox(label="Prompt", elem_id="prompt", placeholder="a shape on a white background")
                negative = gr.Textbox(label="Negative prompt", elem_id="negative-prompt")
                with gr.Row():
                    preset = gr.Dropdown(choices, value=choices[0], label="Preset", elem_id="preset")
                    preset_file = gr.File(
                        label="…or load a preset file (.json)", file_types=[".json"], elem_id="preset-file", height=110
                    )
                fields = {}
                with gr.Accordion("Parameters (from the preset; edit freely)", open=False, elem_id="params"), gr.Row():
                    for name in PARAM_FIELDS:
                        value = box_value(defaults, name)
                        label = f"{name} (0: all)" if name == "max_references" else name
                        fields[name] = gr.Number(
                            value, label=label, precision=0 if name in ("steps", "max_references") else None,
                            elem_id=f"param-{name}", min_width=120,
                        )  # fmt: skip
                with gr.Row():
                    generate = gr.Button("Generate round", variant="primary", elem_id="generate")
                    undo = gr.Button("Undo", elem_id="undo")
                    reset = gr.Button("Reset", elem_id="reset")
                    mark_mode = gr.Radio(
                        ["liked", "disliked"], value="liked", label="A click on an image marks it", elem_id="mark-mode"
                    )
                status = gr.Markdown(elem_id="status")
                round_info = gr.Markdown("No rounds yet.", elem_id="round-info")
                gallery = gr.Gallery(
                    label="Latest round (click to like or dislike; click again to clear)", elem_id="round-gallery",
                    columns=6, height=240, allow_preview=False, format="png", object_fit="contain",
                    interactive=False, fit_columns=False,
                )  # fmt: skip
                references = gr.Gallery(
                    label="References for the next round", elem_id="references", columns=6, height=240,
                    fit_columns=False, allow_preview=False, format="png", interactive=False,
                )  # fmt: skip
                with gr.Accordion("Add your own reference images", open=False):
                    uploads = gr.File(
                        label="Images", file_count="multiple", file_types=["image"], elem_id="upload-images"
                    )
                    upload_mark = gr.Radio(
                        ["liked", "disliked"], value="liked", label="Add them as", elem_id="upload-mark"
                    )
                    add_uploads = gr.Button("Add as references", elem_id="add-uploads")
                with gr.Accordion("History: every round's parameters, seeds and marks", open=False):
                    history = gr.Markdown("No rounds yet.", elem_id="history")
                with gr.Accordion("Export the session (preset + references)", open=False):
                    export_format = gr.Dropdown(list(_FORMATS), value="json", label="Format", elem_id="export-format")
                    export_btn = gr.Button("Export", elem_id="export")
                    export_files = gr.File(
                        label="Files", file_count="multiple", interactive=False, elem_id="export-files", visible=False
                    )
                    export_notes = gr.Markdown(elem_id="export-notes")
                run_info = gr.Markdown(elem_id="run-info")

            # ---- Tune -------------------------------------------------------------------------
            with gr.Tab("Tune", id="tune-tab"):
                gr.Markdown(
                    "Compare rounds made from **your references** (the images marked in Rounds), the same prompt and "
                    "seeds, with different presets, and pick the one you prefer. A preference model (PairwiseGP) "
                    "learns what you like and picks the next comparison (EUBO). Answers are stored as you give them: "
                    "closing the page or restarting the server resumes where you stopped."
                )
                with gr.Row():
                    tuner_name = gr.Textbox(config.tuner, label="Tuner name", elem_id="tuner-name")
                    options = gr.Radio(
                        [2, 3, 4], value=2, label="Presets per comparison (new tuners)", elem_id="tune-options"
                    )
                    tune_start = gr.Button("Show the comparison", variant="primary", elem_id="tune-start")
                tune_status = gr.Markdown(elem_id="tune-status")
                option_columns, option_galleries, option_params, option_buttons = [], [], [], []
                with gr.Row(equal_height=False):
                    for k in range(MAX_OPTIONS):
                        with gr.Column(visible=k < 2) as column:
                            option_galleries.append(
                                gr.Gallery(
                                    label=f"Option {_LETTERS[k]}",
                                    elem_id=f"tune-option-{k}",
                                    columns=4,
                                    height=210,
                                    fit_columns=False,
                                    allow_preview=False,
                                    format="png",
                                    interactive=False,
                                    elem_classes=["tune-option"],
                                )  # fmt: skip
                            )
                            option_params.append(gr.Markdown(elem_id=f"tune-params-{k}"))
                            option_buttons.append(gr.Button(f"I prefer {_LETTERS[k]}", elem_id=f"tune-pick-{k}"))
                        option_columns.append(column)
                recommendation = gr.Markdown(elem_id="tune-recommendation")
                with gr.Row():
                    use_recommended = gr.Button("Use the recommended preset in Rounds", elem_id="tune-use")
                    tune_format = gr.Dropdown(
                        list(_FORMATS), value="json", label="Format", elem_id="tune-export-format"
                    )
                    tune_export = gr.Button("Export the recommended preset", elem_id="tune-export")
                tune_files = gr.File(
                    label="Files", file_count="multiple", interactive=False, elem_id="tune-export-files", visible=False
                )
                tune_notes = gr.Markdown(elem_id="tune-export-notes")

        param_inputs = [fields[name] for name in PARAM_FIELDS]

        # ---- helpers ---------------------------------------------------------------------
        def read_settings(prompt_v, negative_v, n_v, seed_v, preset_v, values: Sequence[Any]) -> RoundSettings:
            params = read_params(values)
            if n_v is None or seed_v is None:
                raise InvalidParameterError("images per round and seed must be whole numbers")
            label = str(preset_v or "custom").split(" ")[0]
            if params != backend_params(preset_v):
                label += " (edited)"
            return RoundSettings(prompt_v or "", negative_v or "", int(n_v), params, label, int(seed_v))

        def backend_params(preset_v) -> FabricParams | None:
            try:
                return backend.load_preset(preset_v)[0]
            except Exception:  # noqa: BLE001 - only used to label edited presets
                return None

        def session_outputs(session: RoundsSession) -> dict:
            last = session.last
            run = session.run.describe() if session.run is not None else ""
            return {
                session_id: session.id,
                gallery: gallery_items(session),
                references: reference_items(session),
                round_info: round_text(last) if last else "No rounds yet.",
                history: history_text(session),
                run_info: f"Session {session.id}: {run}",
            }

        def progress_callback(progress: Any, desc: str) -> Callable[[int, int], None]:
            return lambda i, total: progress((i, total), desc=desc)

        # ---- Rounds handlers -------------------------------------------------------------
        def on_preset(preset_v):
            try:
                params, _, label = backend.load_preset(preset_v)
                return {
                    **{fields[n]: box_value(params, n) for n in PARAM_FIELDS},
                    status: f"Preset {_escape(label)} loaded.",
                }
            except Exception as exc:  # noqa: BLE001 - shown in the page
                return {status: _error(exc)}

        def on_preset_file(file_v):
            if not file_v:
                return {}
            try:
                params, extra, label = backend.load_preset(Path(file_v))
                out = {fields[n]: box_value(params, n) for n in PARAM_FIELDS}
                if extra.get("prompt"):
                    out[prompt] = extra["prompt"]
                if "negative_prompt" in extra:
                    out[negative] = extra["negative_prompt"]
                return {**out, status: f"Preset file {_escape(label)} loaded."}
            except Exception as exc:  # noqa: BLE001
                return {status: _error(exc)}

        def on_generate(
            sid, model_v, prompt_v, negative_v, n_v, seed_v, keep_v, preset_v, *values, progress=gr.Progress()
        ):  # noqa: B008
            try:
                settings = read_settings(prompt_v, negative_v, n_v, seed_v, preset_v, values)
                progress(0, desc="loading model")
                gen = backend.generator(model_v or "", progress=lambda m: progress(0, desc=m))
                session = backend.session(sid, model_v)
                session.model = model_v.strip()
                with backend.lock:
                    r = session.generate(gen, settings, progress=progress_callback(progress, "denoising"))
                out = session_outputs(session)
                out[status] = f"Round {r.number} done: click images to mark them, then generate the next round."
                if not keep_v:
                    out[seed] = settings.seed + settings.n_images
                return out
            except Exception as exc:  # noqa: BLE001
                return {status: _error(exc)}

        def on_select(sid, mode, evt: Any):
            try:
                session = backend.sessions.get(sid or "")
                if session is None or session.last is None:
                    raise InvalidParameterError("generate a round first")
                index = evt.index if isinstance(evt.index, int) else evt.index[0]
                mark = session.toggle(session.last.number, int(index), mode)
                out = session_outputs(session)
                what = mark or "unmarked"
                out[status] = f"Image {index + 1} of round {session.last.number}: {what}."
                return out
            except Exception as exc:  # noqa: BLE001
                return {status: _error(exc)}

        # Gradio finds the event-data argument by its annotation; with postponed annotations it
        # cannot resolve the name `gr` local to this function, so give it the class itself.
        on_select.__annotations__["evt"] = gr.SelectData

        def on_undo(sid):
            try:
                session = backend.sessions.get(sid or "")
                if session is None:
                    raise InvalidParameterError("nothing to undo")
                what = session.undo()
                return {**session_outputs(session), status: f"Undid the last {what}."}
            except Exception as exc:  # noqa: BLE001
                return {status: _error(exc)}

        def on_reset(sid):
            try:
                session = backend.sessions.get(sid or "")
                if session is None:
                    return {status: "Nothing to reset."}
                session.reset()
                return {**session_outputs(session), status: "Reset: no rounds, no references (Undo brings them back)."}
            except Exception as exc:  # noqa: BLE001
                return {status: _error(exc)}

        def on_add_uploads(sid, model_v, files, mark):
            try:
                from fabric.images import load_image

                if not files:
                    raise InvalidParameterError("choose one or more image files first")
                paths = [Path(f) for f in files]
                images = [load_image(p) for p in paths]  # an unreadable file raises ImageError here
                session = backend.session(sid, model_v)
                added = session.add_uploads(images, [p.name for p in paths], mark)
                return {**session_outputs(session), status: f"Added {len(added)} {mark} reference image(s)."}
            except Exception as exc:  # noqa: BLE001
                return {status: _error(exc)}

        def on_export(sid, fmt, prompt_v, negative_v, n_v, seed_v, preset_v, *values):
            try:
                session = backend.sessions.get(sid or "")
                if session is None:
                    raise InvalidParameterError("generate a round first: there is no session to export")
                settings = read_settings(prompt_v, negative_v, n_v, seed_v, preset_v, values)
                result = session.export(fmt, settings)
                notes = "\n".join(f"- {_escape(n)}" for n in result.notes) or "(nothing left out)"
                main = result.files[0]
                replay = f"`fabric-opt generate --preset {main}`" if fmt == "json" else ""
                return {
                    export_files: gr.File(value=[str(f) for f in result.files], visible=True),
                    export_notes: f"Wrote {', '.join(f'`{f}`' for f in result.files)}. {replay}\n\nNotes:\n{notes}",
                    status: f"Exported the session as {fmt}.",
                }
            except Exception as exc:  # noqa: BLE001
                return {status: _error(exc)}

        rounds_outputs = [session_id, gallery, references, round_info, history, run_info, status, seed]
        settings_inputs = [prompt, negative, n_images, seed]
        preset.change(on_preset, [preset], [*param_inputs, status])
        preset_file.upload(on_preset_file, [preset_file], [*param_inputs, prompt, negative, status])
        generate.click(
            on_generate, [session_id, model, prompt, negative, n_images, seed, keep_seeds, preset, *param_inputs],
            rounds_outputs,
        )  # fmt: skip
        gallery.select(on_select, [session_id, mark_mode], rounds_outputs)
        undo.click(on_undo, [session_id], rounds_outputs)
        reset.click(on_reset, [session_id], rounds_outputs)
        add_uploads.click(on_add_uploads, [session_id, model, uploads, upload_mark], rounds_outputs)
        export_btn.click(
            on_export, [session_id, export_format, *settings_inputs, preset, *param_inputs],
            [export_files, export_notes, status],
        )  # fmt: skip

        # ---- Tune handlers ---------------------------------------------------------------
        def tune_outputs(tuner: Any, query: Any, rounds: list[list[Any]]) -> dict:
            k = len(query.options)
            answered = len(tuner.tuner.answered)
            ctx = query.context
            out: dict = {
                query_index: query.index,
                tune_status: (
                    f"Tuner **{tuner.name}**: {answered} answer(s) stored. **Comparison {query.index + 1}** "
                    f"({query.source}): which round do you prefer? Prompt {_escape(ctx.get('prompt', ''))!r}, "
                    f"seeds {', '.join(map(str, ctx.get('seeds', [])))}, {len(ctx.get('liked', []))} liked and "
                    f"{len(ctx.get('disliked', []))} disliked reference(s)."
                ),
                recommendation: recommendation_text(tuner),
            }
            params = query.params(tuner.tuner.space)
            for j in range(MAX_OPTIONS):
                out[option_columns[j]] = gr.Column(visible=j < k)
                if j < k:
                    out[option_galleries[j]] = [(im, f"seed {s}") for im, s in zip(rounds[j], ctx.get("seeds", []))]
                    out[option_params[j]] = f"**{_LETTERS[j]}**: {params_line(params[j])}"
            return out

        def ask_next(tuner, sid, n_v, base, progress):
            """The next comparison, on the prompt of the session's last round when there is one."""
            session = backend.sessions.get(sid or "")
            settings = None
            if session is not None and session.last is not None:
                last = session.last.settings
                settings = RoundSettings(last.prompt, last.negative_prompt, int(n_v or last.n_images), base)
            return tuner.ask(
                session, settings, progress=progress_callback(progress, "denoising"),
                status=lambda m: progress(0, desc=m),
            )  # fmt: skip

        def on_tune_start(sid, name_v, options_v, n_v, *values, progress=gr.Progress()):  # noqa: B008
            try:
                base = read_params(values)
                tuner = backend.tuner(name_v or "", options=int(options_v or 2), base=base)
                return tune_outputs(tuner, *ask_next(tuner, sid, n_v, base, progress))
            except Exception as exc:  # noqa: BLE001
                return {tune_status: _error(exc)}

        def on_pick(k: int) -> Callable:
            def pick(sid, name_v, options_v, n_v, shown, *values, progress=gr.Progress()):  # noqa: B008
                try:
                    base = read_params(values)
                    tuner = backend.tuner(name_v or "", options=int(options_v or 2), base=base)
                    pending = tuner.tuner.pending
                    if shown is None or pending is None or pending.index != shown:
                        raise InvalidParameterError(
                            "this comparison is not the current one: press 'Show the comparison'"
                        )
                    tuner.answer(shown, k)
                    out = tune_outputs(tuner, *ask_next(tuner, sid, n_v, base, progress))
                    out[tune_status] = f"Stored: you preferred {_LETTERS[k]}. " + out[tune_status]
                    return out
                except Exception as exc:  # noqa: BLE001
                    return {tune_status: _error(exc)}

            return pick

        def on_use(name_v, options_v, *values):
            try:
                tuner = backend.tuner(name_v or "", options=int(options_v or 2), base=read_params(values))
                rec = tuner.recommendation()
                if rec is None:
                    raise InvalidParameterError("answer a comparison first: there is no recommendation yet")
                out = {fields[n]: box_value(rec.params, n) for n in PARAM_FIELDS}
                return {**out, tune_status: "The recommended preset is now in the Rounds tab's parameters."}
            except Exception as exc:  # noqa: BLE001
                return {tune_status: _error(exc)}

        def on_tune_export(name_v, options_v, fmt, *values):
            try:
                tuner = backend.tuner(name_v or "", options=int(options_v or 2), base=read_params(values))
                files, notes = tuner.export(fmt)
                lines = "\n".join(f"- {_escape(n)}" for n in notes) or "(nothing left out)"
                return {
                    tune_files: gr.File(value=[str(f) for f in files], visible=True),
                    tune_notes: f"Wrote {', '.join(f'`{f}`' for f in files)}.\n\nNotes:\n{lines}",
                    tune_status: f"Exported the recommended preset as {fmt}.",
                }
            except Exception as exc:  # noqa: BLE001
                return {tune_status: _error(exc)}

        tune_view = [query_index, tune_status, recommendation, *option_columns, *option_galleries, *option_params]
        tune_start.click(on_tune_start, [session_id, tuner_name, options, n_images, *param_inputs], tune_view)
        for k, button in enumerate(option_buttons):
            button.click(on_pick(k), [session_id, tuner_name, options, n_images, query_index, *param_inputs], tune_view)
        use_recommended.click(on_use, [tuner_name, options, *param_inputs], [*param_inputs, tune_status])
        tune_export.click(
            on_tune_export, [tuner_name, options, tune_format, *param_inputs], [tune_files, tune_notes, tune_status]
        )
    return demo


def read_params(values: Sequence[Any]) -> FabricParams:
    """The page's parameter boxes (in :data:`PARAM_FIELDS` order) as validated FabricParams.

    Raises:
        InvalidParameterError: an empty box or an impossible value.
    """
    data: dict[str, Any] = {}
    for name, value in zip(PARAM_FIELDS, values):
        if name == "max_references" and value in (0, None, ""):
            data[name] = None  # 0 (or an empty box): every reference
            continue
        if value is None or value == "":
            raise InvalidParameterError(f"parameter {name} is empty; give a number")
        data[name] = value
    return FabricParams.from_dict(data)


def box_value(params: FabricParams, name: str) -> Any:
    """What a parameter box shows: the value, with ``max_references=None`` ("all") as 0.

    (Gradio's number box sends 0 for an empty box once it has been shown, so "all" cannot be
    an empty box.)
    """
    value = getattr(params, name)
    return 0 if name == "max_references" and value is None else value


def serve(config: AppConfig, *, block: bool = True) -> Any:
    """Build the page and serve it on ``config.host:config.port`` (a login page when a password is set).

    Returns:
        The Gradio ``Blocks`` (already launched; with ``block=False`` the call returns at once).
    """
    gr = _offline_gradio()
    backend = AppBackend(config)
    demo = build_ui(backend)
    demo.queue(default_concurrency_limit=1)
    auth = (config.user, config.password) if config.password is not None else None
    demo.launch(
        server_name=config.host,
        server_port=config.port or None,
        auth=auth,
        auth_message="fabric-opt app: log in with the user and password given to `fabric-opt app`" if auth else None,
        prevent_thread_lock=not block,
        show_error=False,
        ssr_mode=False,
        enable_monitoring=False,
        mcp_server=False,
        pwa=False,
        share=False,
        inbrowser=False,
        quiet=True,
        footer_links=["settings"],
        theme=gr.themes.Default(),
        css=CSS,
    )
    return demo
