"""The `tqdit_sampler` model (Triton Python backend, business-logic scripting).

Inputs, one row per image (Triton batches along the images, at most the config's
max_batch_size per request): class_label INT64, seed INT64, steps INT32, and optionally
sampler BYTES ("ddpm" default, "ddim") and guidance_scale FP32 (default 1.5). Seed, steps,
sampler and guidance must be equal over the rows of one request: the request is one draw,
the same as `tqdit sample --seed S --class ...` or `Pipeline.sample(labels, seed=S)`.
Outputs: images UINT8 (N, H, W, C), samples FP32 (N, C, H, W) in the model's range.

Each step's denoiser call goes to the denoiser model of that step's time group (BLS), with
the conditional and unconditional halves of classifier-free guidance in one request. The
requests a dynamic batch hands to one `execute` share one sampling loop when their settings
are equal (one denoiser call per step for all of them), each with its own noise; groups of
other settings run one loop after another, the fewest steps first, and each request is
answered through its response sender as soon as its own loop ends (a short request batched
with a long one does not wait for it). A bad request gets an error response naming the
input at once; a loop that fails answers only its own requests; the others in the batch
are served. A loop whose requests were all cancelled by their clients stops at
its next step (Triton passes cancellation on from gRPC clients only, not from HTTP).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np

from ..api import ImageRequest, ModelSpec, Pipeline, SampleSettings, check_labels, settings_groups, to_uint8

try:  # present only inside Triton's Python backend stub
    import triton_python_backend_utils as pb_utils
except ImportError:  # pragma: no cover - imported by tests and docs outside Triton
    pb_utils = None

SAMPLER_NAME = "tqdit_sampler"  # repository.SAMPLER_MODEL (not imported: the stub needs no more than this)
DEFAULTS = SampleSettings()  # of a request that leaves sampler or guidance_scale out


class RequestCancelled(Exception):
    """Every request of the running loop (one settings group) was cancelled by its client."""


def one_value(name: str, rows: np.ndarray | None, default=None):
    """The value of an input that holds one row per image and must be equal over them."""
    if rows is None:
        if default is None:
            raise ValueError(f"input {name!r} is missing; send one value per image")
        return default
    flat = rows.reshape(-1)
    if flat.size == 0:
        raise ValueError(f"input {name!r} is empty; send one value per image")
    if not np.all(flat == flat[0]):
        raise ValueError(f"input {name!r} differs between the images of one request; a request is one draw: "
                         "send one request per setting")
    return flat[0]


def parse_request(inputs: dict[str, np.ndarray | None], spec: ModelSpec) -> ImageRequest:
    """The ImageRequest of one request's input arrays (None: not sent); ValueError names a bad input."""
    labels = inputs.get("class_label")
    if labels is None:
        raise ValueError("input 'class_label' is missing; send one class id per image, shape (N, 1)")
    try:
        labels = check_labels(labels.reshape(-1), spec.num_classes)
    except ValueError as err:
        raise ValueError(f"input 'class_label': {err}") from err
    seed = int(one_value("seed", inputs.get("seed")))
    steps = int(one_value("steps", inputs.get("steps")))
    sampler = one_value("sampler", inputs.get("sampler"), DEFAULTS.sampler.encode())
    try:
        sampler = sampler.decode() if isinstance(sampler, bytes) else str(sampler)
    except UnicodeDecodeError as err:
        raise ValueError(f"input 'sampler': {sampler[:20]!r} is not UTF-8 text; send b'ddpm' or b'ddim'") from err
    guidance = float(one_value("guidance_scale", inputs.get("guidance_scale"), DEFAULTS.guidance))
    try:
        settings = SampleSettings(sampler, steps, guidance)
    except ValueError as err:
        raise ValueError(f"inputs steps/sampler/guidance_scale: {err}") from err
    if seed < 0:
        raise ValueError(f"input 'seed': {seed} must be >= 0")
    return ImageRequest(tuple(int(v) for v in labels), seed, settings)


class BlsDenoiser:
    """The numpy denoiser of the sampling loop, as BLS requests to the denoiser models: the model of
    the step's time group (or the one model, fed `time_group`)."""

    def __init__(self, pipeline_json: dict) -> None:
        from calibration.time_groups import TimeGroups

        self.groups = TimeGroups(tuple(pipeline_json["time_groups"]))
        self.denoisers = pipeline_json["denoisers"]
        self.active: list = []  # the requests of the running loop, checked for cancellation each step

    def __call__(self, x: np.ndarray, t: np.ndarray, y: np.ndarray) -> np.ndarray:
        if self.active and all(_cancelled(r) for r in self.active):
            raise RequestCancelled()
        g = self.groups.group_of(t)
        d = self.denoisers[0] if len(self.denoisers) == 1 else self.denoisers[g]
        # Arrays that own their memory: a reshaped view sent through BLS arrived with 0 bytes.
        x = np.array(x, dtype=np.float32, order="C")
        rows = (-1, 1) if d["batched"] else (-1,)
        tensors = [pb_utils.Tensor("x", x), pb_utils.Tensor("t", np.array(t.reshape(rows), dtype=np.int64)),
                   pb_utils.Tensor("y", np.array(y.reshape(rows), dtype=np.int64))]
        if not d["batched"]:
            tensors.append(pb_utils.Tensor("time_group", np.array([g], dtype=np.int64)))
        response = pb_utils.InferenceRequest(model_name=d["name"], requested_output_names=["out"],
                                             inputs=tensors).exec()
        if response.has_error():
            raise RuntimeError(f"denoiser {d['name']}: {response.error().message()}")
        return pb_utils.get_output_tensor_by_name(response, "out").as_numpy()


def _cancelled(request) -> bool:
    check = getattr(request, "is_cancelled", None)  # Python backend >= 23.10
    return bool(check()) if check is not None else False


def _error(message: str, cancelled: bool = False):
    code = getattr(pb_utils.TritonError, "CANCELLED", None) if cancelled else None
    error = pb_utils.TritonError(message, code) if code is not None else pb_utils.TritonError(message)
    return pb_utils.InferenceResponse(output_tensors=[], error=error)


def _cancelled_error():
    return _error(f"{SAMPLER_NAME}: request cancelled by its client", cancelled=True)


def _images(x: np.ndarray):
    return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("images", to_uint8(x)),
                                                      pb_utils.Tensor("samples", x.astype(np.float32))])


def _answer(request, response) -> None:
    """Send a request's one response now (a non-decoupled model may send one, then final). A send
    that fails (the stub could not place the images in shared memory, say a container's small
    /dev/shm) is logged with the request's id and answered with an error that says why, which
    needs no tensor memory; only when that fails too does the request stay unanswered (logged).
    The other requests of the batch are answered either way."""
    rid = getattr(request, "request_id", lambda: "")()
    try:
        request.get_response_sender().send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return
    except Exception as err:  # noqa: BLE001
        pb_utils.Logger.log_error(f"{SAMPLER_NAME}: the response to request {rid!r} could not be sent: {err}")
        failure = err
    why = _error(f"{SAMPLER_NAME}: the response could not be sent ({failure}); if the server's /dev/shm is "
                 "small, give it more (docker run --shm-size) or ask for fewer images")
    try:
        request.get_response_sender().send(why, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
    except Exception as err:  # noqa: BLE001
        pb_utils.Logger.log_error(f"{SAMPLER_NAME}: request {rid!r} stays unanswered: its error response could "
                                  f"not be sent either: {err}")


def loop_order(requests: list[ImageRequest]) -> list[list[int]]:
    """The requests' loops (indices of equal settings) in the order they run: the fewest steps
    first, then the fewest images, so the short requests of a batch are answered first."""
    groups = settings_groups(requests)
    return sorted(groups.values(), key=lambda members: (requests[members[0]].settings.steps,
                                                        sum(len(requests[m].labels) for m in members)))


INPUT_NAMES = ("class_label", "seed", "steps", "sampler", "guidance_scale")


class TritonPythonModel:
    """The Python-backend model: initialize reads pipeline.json, execute samples a batch of requests."""

    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        name = config["parameters"]["pipeline"]["string_value"]
        path = Path(args["model_repository"]) / args["model_version"] / name
        self.pipeline_json = json.loads(path.read_text())
        self.spec = ModelSpec.from_json(self.pipeline_json["spec"])
        self.denoiser = BlsDenoiser(self.pipeline_json)
        self.pipeline = Pipeline(self.denoiser, self.spec, "triton")

    def execute(self, requests: list) -> None:
        """Answer every request through its response sender, once (so None is returned): a bad
        one at once, the others when their own loop ends. Nothing escapes once a response has
        gone out (Triton would then release the answered requests' response factories a second
        time): an unexpected error answers the requests not yet answered with it."""
        answered: set[int] = set()

        def answer(i: int, response) -> None:
            if i not in answered:
                answered.add(i)
                _answer(requests[i], response)

        try:
            self._serve(requests, answer)
        except Exception as err:  # noqa: BLE001 - see the docstring
            for i in range(len(requests)):
                answer(i, _error(f"{SAMPLER_NAME}: internal error: {err}"))
        return None

    def _serve(self, requests: list, answer: Callable[[int, object], None]) -> None:
        parsed: list[tuple[int, ImageRequest]] = []
        for i, request in enumerate(requests):
            try:
                inputs = {}
                for n in INPUT_NAMES:
                    tensor = pb_utils.get_input_tensor_by_name(request, n)
                    inputs[n] = None if tensor is None else tensor.as_numpy()
                parsed.append((i, parse_request(inputs, self.spec)))
            except ValueError as err:
                answer(i, _error(f"{SAMPLER_NAME}: {err}"))
            except Exception as err:  # noqa: BLE001 - this request only
                answer(i, _error(f"{SAMPLER_NAME}: the request could not be read: {err}"))
        # One loop per group of equal settings, each on its own: a group whose loop fails, or whose
        # requests were all cancelled, answers only its own requests.
        for members in loop_order([r for _, r in parsed]):
            loop = [parsed[m] for m in members]
            self.denoiser.active = [requests[i] for i, _ in loop]
            try:
                images = self.pipeline.sample_requests([r for _, r in loop])
                answers = [_cancelled_error() if _cancelled(requests[i]) else _images(x)
                           for (i, _), x in zip(loop, images)]
            except RequestCancelled:
                answers = [_cancelled_error() for _ in loop]
            except Exception as err:  # noqa: BLE001 - a failed loop answers every request of it
                answers = [_error(f"{SAMPLER_NAME}: sampling failed: {err}") for _ in loop]
            finally:
                self.denoiser.active = []
            for (i, _), response in zip(loop, answers):
                answer(i, response)

    def finalize(self) -> None:
        self.pipeline = None

