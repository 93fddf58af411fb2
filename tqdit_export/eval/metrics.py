"""Sample-quality metrics: Fréchet distance, class accuracy, paired PSNR.

On the bundled 8x8 digits the feature space is the penultimate layer (64-d) of the bundled
`DigitsClassifier` and the reference set is the held-out split, which neither the DiT nor
the classifier trained on (`evaluate_digits`). For real DiT-XL/2 models bring your own
feature network as an ONNX file (`OnnxFeatureExtractor`, e.g. an Inception-v3 pool3
export) and call `frechet_distance` on its features.

A Fréchet distance depends on the sample count (it is biased upward for small N), so
`evaluate_digits` also reports `fd_reference`: the FD of the same number of *real* train
digits vs held-out, i.e. the value a perfect generator would get at that N.
"""
from __future__ import annotations

import functools
import warnings
from pathlib import Path
from typing import Callable, Protocol, runtime_checkable

import numpy as np
import torch

from .classifier import NUM_CLASSES, DigitsClassifier, load_digits_classifier

PSNR_CAP_DB = 100.0


# ----------------------------------------------------------------------------- Fréchet distance


def frechet_terms(feats_a: np.ndarray, feats_b: np.ndarray, eps: float = 1e-6) -> dict[str, float]:
    """The terms of the Fréchet distance between Gaussians fitted to (N_a, D) and (N_b, D).

    FD = ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)); returns
    {"mean": ||mu_a - mu_b||^2, "trace_a": Tr S_a, "trace_b": Tr S_b,
    "cross": 2 Tr (S_a S_b)^(1/2)}, which tell a shifted set (mean) from a narrower or wider
    one (trace_a against trace_b). Computed in float64, as in
    pytorch-fid: if the matrix square root is not finite (singular covariances, e.g. with
    fewer samples than dimensions or dead ReLU units) it is recomputed with `eps * I` added
    to both covariances; a small imaginary part from numerical error is dropped (a large
    one is retried with the offset, then raises). Tiny negative results from round-off are
    clipped to 0 by `frechet_distance`.
    """
    from scipy import linalg

    a = np.asarray(feats_a, dtype=np.float64)
    b = np.asarray(feats_b, dtype=np.float64)
    for name, f in (("feats_a", a), ("feats_b", b)):
        if f.ndim != 2:
            raise ValueError(f"{name} must be 2-D (N, D), got shape {f.shape}")
        if f.shape[0] < 2:
            raise ValueError(f"{name} needs at least 2 samples to estimate a covariance, got {f.shape[0]}")
        if not np.isfinite(f).all():
            raise ValueError(f"{name} contains non-finite values")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} vs {b.shape[1]}")

    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a = np.atleast_2d(np.cov(a, rowvar=False))
    s_b = np.atleast_2d(np.cov(b, rowvar=False))
    diff = mu_a - mu_b

    def _sqrt(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        # Singular products are common (dead ReLU units give zero-variance features) and
        # scipy warns about them; the result is checked for finiteness below instead.
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", linalg.LinAlgWarning)
            return linalg.sqrtm(x @ y)

    covmean = _sqrt(s_a, s_b)
    bad_imag = np.iscomplexobj(covmean) and not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3)
    if not np.isfinite(covmean).all() or bad_imag:
        offset = np.eye(s_a.shape[0]) * eps
        covmean = _sqrt(s_a + offset, s_b + offset)
    if not np.isfinite(covmean).all():
        raise ValueError("matrix square root of the covariance product is not finite, even with an eps offset")
    if np.iscomplexobj(covmean):
        max_imag = np.max(np.abs(np.diagonal(covmean).imag))
        if max_imag > 1e-3:
            raise ValueError(f"matrix square root has a large imaginary component ({max_imag:.3g})")
        covmean = covmean.real
    return {"mean": float(diff @ diff), "trace_a": float(np.trace(s_a)), "trace_b": float(np.trace(s_b)),
            "cross": float(2.0 * np.trace(covmean))}


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray, eps: float = 1e-6) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N_a, D), (N_b, D).

    The sum of `frechet_terms` (pytorch-fid's arithmetic); tiny negative results from
    round-off are clipped to 0.
    """
    t = frechet_terms(feats_a, feats_b, eps)
    return max(t["mean"] + t["trace_a"] + t["trace_b"] - t["cross"], 0.0)


def _class_means(feats: np.ndarray, labels: np.ndarray, name: str) -> dict[int, np.ndarray]:
    f = np.asarray(feats, dtype=np.float64)
    y = np.asarray(labels)
    if f.ndim != 2 or y.shape != (len(f),):
        raise ValueError(f"{name}: features must be (N, D) with labels (N,), got {f.shape} and {y.shape}")
    return {int(c): f[y == c].mean(0) for c in np.unique(y)}


def class_spread(feats: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """How a labelled feature set's variance splits between and within its classes.

    Returns {"within": mean over classes of Tr Cov(class features), "between": mean over
    classes of ||class mean - mean of the class means||^2}. Classifier-free guidance moves
    both: it narrows each class and pushes the classes apart, which a total-variance (trace)
    term alone cannot tell from a model that is simply too diverse. Classes with fewer than 2
    samples are left out of "within"; at least 2 classes are needed.
    """
    f = np.asarray(feats, dtype=np.float64)
    means = _class_means(f, labels, "class_spread")
    if len(means) < 2:
        raise ValueError(f"class_spread needs at least 2 classes, got {len(means)}")
    y = np.asarray(labels)
    within = [np.trace(np.atleast_2d(np.cov(f[y == c], rowvar=False))) for c in means if (y == c).sum() >= 2]
    mu = np.stack(list(means.values()))
    return {"within": float(np.mean(within)) if within else float("nan"),
            "between": float(((mu - mu.mean(0)) ** 2).sum(1).mean())}


def class_mean_shift(feats_a: np.ndarray, labels_a: np.ndarray, feats_b: np.ndarray, labels_b: np.ndarray) -> float:
    """Mean over the classes both sets have of ||class mean in a - class mean in b||^2."""
    ma = _class_means(feats_a, labels_a, "feats_a")
    mb = _class_means(feats_b, labels_b, "feats_b")
    shared = sorted(set(ma) & set(mb))
    if not shared:
        raise ValueError(f"the two sets share no class (a has {sorted(ma)}, b has {sorted(mb)})")
    return float(np.mean([((ma[c] - mb[c]) ** 2).sum() for c in shared]))


# ----------------------------------------------------------------------------- feature extractors


@runtime_checkable
class FeatureExtractor(Protocol):
    """images (N, C, H, W) float32 in the model range [-1, 1] -> features (N, D) numpy."""

    def __call__(self, images: np.ndarray) -> np.ndarray: ...


def _as_numpy_images(images, name: str = "images") -> np.ndarray:
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    x = np.asarray(images)
    if x.ndim != 4:
        raise ValueError(f"{name} must be 4-D (N, C, H, W), got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{name} must be floating point in the model range [-1, 1], got dtype {x.dtype}")
    return x.astype(np.float32, copy=False)


@functools.lru_cache(maxsize=1)
def _default_classifier() -> DigitsClassifier:
    return load_digits_classifier()


class DigitsFeatures:
    """64-d penultimate features of the digits classifier (the bundled one by default)."""

    dim = 64

    def __init__(self, classifier: DigitsClassifier | None = None, batch_size: int = 1024) -> None:
        self.classifier = (classifier if classifier is not None else _default_classifier()).eval()
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, images) -> np.ndarray:
        x = _as_numpy_images(images)
        if x.shape[1:] != (1, 8, 8):
            raise ValueError(f"DigitsFeatures expects (N, 1, 8, 8) images, got {x.shape}")
        out = [self.classifier.features(torch.from_numpy(np.ascontiguousarray(x[i : i + self.batch_size])))
               for i in range(0, len(x), self.batch_size)]
        return torch.cat(out).numpy().astype(np.float64) if out else np.zeros((0, self.dim))


class OnnxFeatureExtractor:
    """Features from a user-brought ONNX network, run with onnxruntime (imported lazily).

    Input layout: the network's input is fed NCHW float32. Images arrive in the model range
    [-1, 1], (N, C, H, W); they are (1) resized bilinearly to `resize=(H, W)` if given,
    (2) repeated to 3 channels if they have 1 and the network's input declares exactly 3,
    (3) passed through `preprocess` (numpy -> numpy) if given -- use it for any other
    normalisation the network expects (e.g. [-1, 1] -> [0, 255] or ImageNet mean/std).
    Without `preprocess` the pixels go in unchanged, in [-1, 1] (which is what the common
    pytorch-fid Inception export expects after its own resize to 299x299).

    `input_name` / `output_name` default to the network's first input / output. The
    output is flattened to (N, D) (e.g. Inception pool3 (N, 2048, 1, 1) -> (N, 2048)).
    If the input's batch dimension is fixed, batches of exactly that size are fed (the
    last one padded, the padding dropped again); otherwise `batch_size` is used.
    """

    def __init__(
        self,
        path: str | Path,
        input_name: str | None = None,
        output_name: str | None = None,
        resize: tuple[int, int] | None = None,
        preprocess: Callable[[np.ndarray], np.ndarray] | None = None,
        batch_size: int = 256,
        providers: list[str] | None = None,
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("OnnxFeatureExtractor needs onnxruntime: pip install onnxruntime") from e
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX feature network not found: {self.path}")
        self.session = ort.InferenceSession(str(self.path), providers=providers or ["CPUExecutionProvider"])
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = [o.name for o in self.session.get_outputs()]
        self.input_name = input_name or next(iter(inputs))
        self.output_name = output_name or outputs[0]
        if self.input_name not in inputs:
            raise ValueError(f"{self.path}: no input named {self.input_name!r} (inputs: {list(inputs)})")
        if self.output_name not in outputs:
            raise ValueError(f"{self.path}: no output named {self.output_name!r} (outputs: {outputs})")
        shape = list(inputs[self.input_name].shape)
        self._fixed_batch = shape[0] if shape and isinstance(shape[0], int) and shape[0] > 0 else None
        self._want_channels = shape[1] if len(shape) == 4 and isinstance(shape[1], int) else None
        self.resize = tuple(resize) if resize is not None else None
        self.preprocess = preprocess
        self.batch_size = self._fixed_batch or batch_size

    def _prepare(self, x: np.ndarray) -> np.ndarray:
        if self.resize is not None and tuple(x.shape[2:]) != self.resize:
            t = torch.nn.functional.interpolate(torch.from_numpy(x), size=self.resize, mode="bilinear",
                                                align_corners=False)
            x = t.numpy()
        if x.shape[1] == 1 and self._want_channels == 3:
            x = np.repeat(x, 3, axis=1)
        if self.preprocess is not None:
            x = np.asarray(self.preprocess(x), dtype=np.float32)
        return np.ascontiguousarray(x, dtype=np.float32)

    def __call__(self, images) -> np.ndarray:
        x = _as_numpy_images(images)
        out = []
        for i in range(0, len(x), self.batch_size):
            chunk = self._prepare(x[i : i + self.batch_size])
            n = len(chunk)
            if self._fixed_batch and n < self._fixed_batch:
                pad = np.repeat(chunk[-1:], self._fixed_batch - n, axis=0)
                chunk = np.concatenate([chunk, pad])
            (y,) = self.session.run([self.output_name], {self.input_name: chunk})
            out.append(np.asarray(y)[:n].reshape(n, -1))
        return np.concatenate(out).astype(np.float64) if out else np.zeros((0, 0))


# ----------------------------------------------------------------------------- accuracy, PSNR


@torch.no_grad()
def class_accuracy(classifier: torch.nn.Module, images, labels) -> float:
    """Fraction of `images` that `classifier` assigns to their intended `labels`."""
    x = _as_numpy_images(images)
    y = np.asarray(labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else labels)
    if y.shape != (len(x),):
        raise ValueError(f"labels must have shape ({len(x)},), got {y.shape}")
    if len(x) == 0:
        raise ValueError("no images")
    classifier.eval()
    preds = torch.cat([classifier(torch.from_numpy(np.ascontiguousarray(x[i : i + 1024]))).argmax(1)
                       for i in range(0, len(x), 1024)]).numpy()
    return float((preds == y).mean())


def paired_psnr(a, b, data_range: float = 2.0, max_db: float = PSNR_CAP_DB) -> float:
    """Mean over pairs of per-image PSNR (dB) between two sample sets of equal shape.

    Meant for samples drawn from the same noise (e.g. FP32 vs quantised model). The data
    range defaults to 2 (images in [-1, 1]). A pair of identical images (MSE 0, infinite
    PSNR) counts as `max_db` (100 dB), and every per-image value is capped there, so the
    mean stays finite and one exact match cannot dominate it.
    """
    x = np.asarray(a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else a, dtype=np.float64)
    y = np.asarray(b.detach().cpu().numpy() if isinstance(b, torch.Tensor) else b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {x.shape} vs {y.shape}")
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"expected a batch of images (N, ...), got shape {x.shape}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("images contain non-finite values")
    if data_range <= 0:
        raise ValueError(f"data_range must be positive, got {data_range}")
    mse = ((x - y) ** 2).reshape(len(x), -1).mean(1)
    with np.errstate(divide="ignore"):
        psnr = 10.0 * np.log10(data_range**2 / mse)
    return float(np.minimum(psnr, max_db).mean())


# ----------------------------------------------------------------------------- digits bundle


def _validate_digits(images, labels) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    x = np.asarray(images)
    y = np.asarray(labels)
    if x.ndim != 4 or x.shape[1:] != (1, 8, 8):
        raise ValueError(f"images must have shape (N, 1, 8, 8), got {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"images must be floating point in [-1, 1], got dtype {x.dtype}")
    if not np.isfinite(x).all():
        raise ValueError(f"images contain {int((~np.isfinite(x)).sum())} non-finite values (NaN/inf)")
    if y.shape != (len(x),):
        raise ValueError(f"labels must have shape ({len(x)},) to match the images, got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integers 0..9, got dtype {y.dtype}")
    if len(y) and (y.min() < 0 or y.max() >= NUM_CLASSES):
        raise ValueError(f"labels must be in 0..{NUM_CLASSES - 1}, got range {y.min()}..{y.max()}")
    if len(x) < 2:
        raise ValueError(f"need at least 2 images for a Fréchet distance, got {len(x)}")
    return x.astype(np.float32, copy=False), y.astype(np.int64, copy=False)


def evaluate_digits(images, labels, num_reference: int | None = None, seed: int = 0,
                    classifier: DigitsClassifier | None = None) -> dict:
    """Score class-conditional digit samples against the held-out split.

    images: (N, 1, 8, 8) float in [-1, 1]; labels: (N,) ints 0..9 (the intended classes).
    Returns a dict with
      fd            FD (classifier features) of the samples vs the 360 held-out digits
      fd_terms      its terms: "mean" (squared distance of the means), "trace_samples" and
                    "trace_heldout" (total feature variance of each set), "cross"
      class_terms   the class structure behind them (`class_spread`, `class_mean_shift`):
                    "within_samples"/"within_heldout" (mean variance inside a class),
                    "between_samples"/"between_heldout" (spread of the class means),
                    "class_mean_shift" (samples' class means vs held-out's, per class);
                    None when the samples hold fewer than 2 classes
      fd_reference  FD of `num_reference` (default N, capped at 1437) real *train* digits,
                    drawn at random with `seed`, vs held-out: what a perfect model gets
      accuracy      fraction classified as their intended label
      per_class_accuracy  list of 10 (NaN for classes with no samples)
      num, num_reference, num_heldout
    """
    from ..data import digits_split

    x, y = _validate_digits(images, labels)
    clf = classifier if classifier is not None else _default_classifier()
    feats = DigitsFeatures(clf)
    split = digits_split()
    ho = feats(split.heldout_images)
    n_ref = min(int(num_reference) if num_reference is not None else len(x), len(split.train_images))
    if n_ref < 2:
        raise ValueError(f"num_reference must be at least 2, got {n_ref}")
    rng = np.random.default_rng(seed)
    ref_idx = rng.choice(len(split.train_images), size=n_ref, replace=False)

    with torch.no_grad():
        preds = clf.eval()(torch.from_numpy(np.ascontiguousarray(x))).argmax(1).numpy()
    correct = preds == y
    per_class = [float(correct[y == c].mean()) if (y == c).any() else float("nan") for c in range(NUM_CLASSES)]
    fx = feats(x)
    terms = frechet_terms(fx, ho)
    class_terms = None  # a class structure needs at least 2 classes among the samples
    if len(np.unique(y)) >= 2:
        spread, spread_ho = class_spread(fx, y), class_spread(ho, split.heldout_labels)
        class_terms = {"within_samples": spread["within"], "within_heldout": spread_ho["within"],
                       "between_samples": spread["between"], "between_heldout": spread_ho["between"],
                       "class_mean_shift": class_mean_shift(fx, y, ho, split.heldout_labels)}
    return {
        "fd": max(terms["mean"] + terms["trace_a"] + terms["trace_b"] - terms["cross"], 0.0),
        "fd_terms": {"mean": terms["mean"], "trace_samples": terms["trace_a"], "trace_heldout": terms["trace_b"],
                     "cross": terms["cross"]},
        "class_terms": class_terms,
        "fd_reference": frechet_distance(feats(split.train_images[ref_idx]), ho),
        "accuracy": float(correct.mean()),
        "per_class_accuracy": per_class,
        "num": int(len(x)),
        "num_reference": int(n_ref),
        "num_heldout": int(len(ho)),
    }
