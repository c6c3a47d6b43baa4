"""The web demo: one page (static/) and a small JSON API over the captioning functions.

    GET  /                 the demo page
    GET  /api/models       the models this server offers (name, file(s), own beam size)
    GET  /api/samples      the sample photos shipped with captioner
    GET  /samples/NAME     one sample photo
    POST /api/caption      multipart form: file (an image) or sample (a sample's name); model; beam_size
                           (default: the model's decode.beam_size)
                           -> caption, tokens, score, attention grids (one g x g map per word) or null
                              (and ``looked``, 1 - beta_t per word, for adaptive attention, else null)

Every problem with a request is a 4xx JSON answer ``{"error": "..."}``: a missing or unknown model or sample,
a bad beam size, an empty, non-image, corrupt or oversize upload. Each model is a
:class:`~captioner.captioning.Captioner`, loaded when the app is made; requests that arrive together are
captioned together, as one batch (:class:`Batcher`), instead of one after the other.
"""

import base64
import io
import queue
import threading
import time
from concurrent.futures import Future
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from captioner.captioning import Caption, Captioner
from captioner.errors import CaptionerError

STATIC = Path(__file__).parent / "static"
SAMPLES = Path(__file__).parents[1] / "samples"
BEAM_SIZES = (1, 3, 5, 10, 20)
PREVIEW_SIDE = 640  # the upright image sent back for display under the attention overlay


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def create_app(models: dict[str, str | Path | list], max_upload_mb: float = 10.0, max_pixels: int = 40_000_000,
               samples: Path = SAMPLES, device: str = "cpu", consensus: str | Path | None = None,
               backend: str = "torch") -> FastAPI:
    """The demo app for the named models (the first is the default), run on ``device``: each a model file, or a
    list of files that caption as one ensemble (as ``captioner caption --model a --model b``). ``consensus``: a
    dataset whose training captions rerank every model's beams (as ``captioner caption --consensus DATA``);
    ``backend``: what runs the encoders (torch, onnx or auto, as :func:`captioner.load` takes).
    Every model is loaded now, as a :class:`~captioner.captioning.Captioner` (``app.state.models[name]``)."""
    from captioner.api import load

    if not models:
        raise CaptionerError("serve: no model to serve")
    loaded: dict[str, Captioner] = {}
    files: dict[str, list[Path]] = {}
    for name, spec in models.items():
        paths = [Path(p) for p in (spec if isinstance(spec, list | tuple) else [spec])]
        for path in paths:
            if not path.is_file():
                raise CaptionerError(f"{path}: no such model file (model '{name}')")
        loaded[name], files[name] = load(paths, device=device, consensus=consensus, backend=backend), paths
    batchers = {name: Batcher(cap) for name, cap in loaded.items()}
    max_bytes = int(max_upload_mb * 1024 * 1024)
    app = FastAPI(title="captioner", docs_url="/api/docs", redoc_url=None)
    app.state.models = loaded

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'request'}: {e['msg']}"
                             for e in exc.errors())
        return JSONResponse({"error": problems or "invalid request"}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    @app.middleware("http")
    async def cap_request_size(request: Request, call_next):
        """Refuse an oversize upload from its Content-Length, before reading it."""
        length = request.headers.get("content-length")
        if request.method == "POST" and length and length.isdigit() and int(length) > max_bytes + 64 * 1024:
            return JSONResponse({"error": f"upload too large (limit {max_upload_mb:g} MB)"}, status_code=413)
        return await call_next(request)

    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/api/models")
    def list_models():
        return {"models": [{"name": name, "file": " + ".join(p.name for p in files[name]),
                            "beam_size": cap.model.config.decode.beam_size} for name, cap in loaded.items()],
                "default": next(iter(loaded)), "beam_sizes": list(BEAM_SIZES)}

    @app.get("/api/samples")
    def list_samples():
        return {"samples": sorted(p.name for p in samples.glob("*.jpg"))}

    @app.get("/samples/{name}", include_in_schema=False)
    def sample_file(name: str):
        return FileResponse(_sample_path(samples, name))

    @app.post("/api/caption")
    async def caption(request: Request):
        # the form is read by hand, not through FastAPI parameters, so that every problem (the size of the
        # upload included) gets one of our JSON errors
        form = await _read_form(request, max_bytes)
        model = form.get("model") or next(iter(loaded))
        if not isinstance(model, str) or model not in loaded:
            raise ApiError(404, f"unknown model '{model}' (models: {', '.join(loaded)})")
        beam = form.get("beam_size") or None  # none: the model's own (decode.beam_size)
        if beam is not None and not (isinstance(beam, str) and beam.strip().isdigit()
                                     and 1 <= int(beam) <= max(BEAM_SIZES)):
            raise ApiError(422, f"beam_size must be a whole number from 1 to {max(BEAM_SIZES)}")
        image, source = await run_in_threadpool(_form_image, form, samples, max_pixels)
        return await run_in_threadpool(_caption, batchers[model], model, image, source,
                                       None if beam is None else int(beam))

    return app


async def _read_form(request: Request, max_bytes: int) -> dict:
    """The multipart (or url-encoded) form as {name: str | (filename, bytes)}; 413 past max_bytes."""
    try:
        form = await request.form(max_files=1, max_fields=10)
    except Exception as e:  # malformed bodies raise assorted parser errors
        raise ApiError(400, f"could not read the form ({e})") from None
    out = {}
    try:
        for key, value in form.multi_items():
            if isinstance(value, str):
                out[key] = value
                continue
            data = await value.read(max_bytes + 1)
            if len(data) > max_bytes:
                raise ApiError(413, f"{value.filename or 'upload'}: upload too large "
                                    f"(limit {max_bytes / 1024 / 1024:g} MB)")
            out[key] = (value.filename or "upload", data)
    finally:
        await form.close()
    return out


def _form_image(form: dict, samples: Path, max_pixels: int):
    from captioner.data.images import decode_image, load_image

    upload, sample = form.get("file"), form.get("sample")
    if isinstance(upload, tuple):
        filename, data = upload
        try:
            return decode_image(data, filename, max_pixels), filename
        except CaptionerError as e:
            raise ApiError(413 if "too large" in str(e) else 400, str(e)) from None
    if isinstance(sample, str) and sample:
        return load_image(_sample_path(samples, sample)), sample
    raise ApiError(400, "send an image as the form field 'file', or a sample name as 'sample'")


def _sample_path(samples: Path, name: str) -> Path:
    path = samples / name
    if "/" in name or "\\" in name or name.startswith(".") or path.suffix != ".jpg" or not path.is_file():
        raise ApiError(404, f"unknown sample '{name}'")
    return path


class Batcher:
    """Requests to one Captioner that arrive within ``wait`` seconds of each other are captioned as one batch
    (one encoder pass, one beam search per beam size): under load, requests share the work instead of queueing
    one by one behind a lock."""

    def __init__(self, cap: Captioner, wait: float = 0.005, max_batch: int = 16):
        self.cap, self.wait, self.max_batch = cap, wait, max_batch
        self._queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._run, daemon=True, name="captioner-batcher").start()

    def caption(self, image, beam: int | None) -> Caption:
        """Caption one image (blocking; from a worker thread): it joins whatever batch is forming."""
        done = Future()
        self._queue.put((image, beam, done))
        return done.result()

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            deadline = time.perf_counter() + self.wait
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get(timeout=max(0.0, deadline - time.perf_counter())))
                except queue.Empty:
                    break
            for beam in {b for _, b, _ in batch}:  # one beam search per beam size asked for
                group = [(img, done) for img, b, done in batch if b == beam]
                try:
                    results = self.cap([img for img, _ in group], beam_size=beam)
                except Exception as e:  # the requests get the error; the batcher goes on
                    for _, done in group:
                        done.set_exception(e)
                    continue
                for (_, done), result in zip(group, results, strict=True):
                    done.set_result(result)


def _caption(batcher: Batcher, name: str, image, source: str, beam: int | None) -> dict:
    start = time.perf_counter()
    cap = batcher.cap
    result = batcher.caption(image, beam)
    if result.error is not None:
        raise ApiError(400, f"{source}: {result.error}")
    out = result.to_dict()
    attention = out.get("attention")
    return {
        "caption": out["caption"], "tokens": out["tokens"], "score": out["score"], "finished": out["finished"],
        "model": name, "model_type": cap.kind,
        "beam_size": beam or cap.model.config.decode.beam_size, "reranked": cap.reranker is not None,
        "source": source, "width": image.width, "height": image.height,
        "grid": round(len(attention[0]) ** 0.5) if attention else None, "attention": attention,
        "locations": out.get("locations"), "looked": out.get("looked"), "preview": _preview(image),
        "seconds": round(time.perf_counter() - start, 3),
    }


def _preview(image) -> str:
    """The upright RGB image as a JPEG data URL (the browser may not display the uploaded format)."""
    img = image.copy()
    img.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
