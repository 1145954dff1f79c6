"""Calibrate the classifiers' scores with temperature scaling (Guo et al., 2017) and record it in the manifest.

    python -m training.calibrate                                  # every classifier in the manifest
    python -m training.calibrate --models digits-cnn digits-mlp   # only these (e.g. after retraining)
    python -m training.calibrate --dry-run                        # measure and print, write nothing

For each model: logits on a calibration split the model never trained on and that is not its test set, one
temperature T fitted there by minimising the negative log-likelihood of softmax(logits / T), then the expected
calibration error (ECE, 15 equal-width confidence bins) measured before (T = 1) and after on the test set. The
server divides the logits by T before the softmax; the argmax, and so the accuracy, do not change.

Calibration splits (see docs/calibration.md):
  digits     MNIST train images 55000..59999 (the digits models train on the first 55,000 only)
  objects    CIFAR-10 subset train images [train_size:] when the model left some out; otherwise (today: all
             8,068 used) the 1,017 test images: the served T is fitted on all of them, and the ECE is 2-fold
             cross-fitted (T fitted on one class-stratified half scores the other, both ways, the 1,017 out-of-fold
             scores pooled), so no figure is measured on the images its T was fitted on
  sentiment  rt-polarity sentences (Pang & Lee) that are SST-2 *test* sentences: never trained on, not SST-2 dev

Only the `calibration` key of each named model's manifest entry is written; everything else is left as it is.
"""
import argparse
import json
import re
import time
from pathlib import Path

import numpy as np
import torch

from models.sentiment import pad_batch, tokenize
from training import digits, objects
from models.checkpoints import auto_device
from training.common import HELDOUT_DIR, WEIGHTS_DIR, default_data_dir, seed_everything
from training.data import load_cifar_subset, load_heldout, load_mnist, load_sst2
from training.evaluate import load_model

DIGITS_CALIBRATION = slice(55000, 60000)  # the last 5,000 of the MNIST training file, left out of training
CIFAR_TRAIN_SIZE = 8068


# ---------------------------------------------------------------------------------------------------------
# Metrics

def expected_calibration_error(probs, labels, bins: int = 15) -> float:
    """Top-label ECE with `bins` equal-width confidence bins (b/bins, (b+1)/bins]: the mean over inputs of
    |accuracy - mean confidence| of each input's bin (Naeini et al., 2015; Guo et al., 2017)."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    confidence, correct = probs.max(1), probs.argmax(1) == labels
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    error = 0.0
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            error += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(error)


def softmax(logits, temperature: float = 1.0) -> np.ndarray:
    """softmax(logits / T) in float64, as the server computes it (there in float32)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z -= z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def nll(logits, labels, temperature: float = 1.0) -> float:
    p = softmax(logits, temperature)
    return float(-np.log(np.clip(p[np.arange(len(labels)), labels], 1e-300, None)).mean())


def noise_floor(probs, bins: int, seed: int, draws: int = 500) -> float:
    """Mean ECE a perfectly calibrated model with these scores would show on this many inputs: correctness drawn
    as Bernoulli(score). ECE on a few hundred inputs is never zero; this says how far from zero it can get."""
    rng = np.random.default_rng(seed)
    confidence = np.asarray(probs, dtype=np.float64).max(1)
    fake = np.zeros_like(probs, dtype=np.float64)
    fake[:, 0] = confidence
    fake[:, 1:] = (1 - confidence)[:, None] / max(fake.shape[1] - 1, 1)  # argmax stays class 0
    floors = [expected_calibration_error(fake, np.where(rng.random(len(confidence)) < confidence, 0, -1), bins)
              for _ in range(draws)]
    return float(np.mean(floors))


# ---------------------------------------------------------------------------------------------------------
# Temperature and threshold

def fit_temperature(logits, labels) -> float:
    """The T minimising the NLL of softmax(logits / T) (convex in 1/T), by L-BFGS on log T."""
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels))
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=200, tolerance_change=1e-12,
                                  line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp())


def isotonic(values: np.ndarray) -> np.ndarray:
    """Pool-adjacent-violators: the non-decreasing sequence closest (least squares) to `values`."""
    blocks: list[list[float]] = []  # [sum, count]
    for v in values:
        blocks.append([float(v), 1.0])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            s, c = blocks.pop()
            blocks[-1][0] += s
            blocks[-1][1] += c
    return np.concatenate([np.full(int(c), s / c) for s, c in blocks])


def low_confidence_threshold(probs, labels, sure_accuracy: float) -> float:
    """The calibrated score under which answers on the calibration split are right less than `sure_accuracy` of
    the time: where the isotonic fit of correctness against score crosses `sure_accuracy`. When too few answers
    there are wrong to place the crossing (every isotonic level already >= sure_accuracy), the scores are taken
    at their word (they are calibrated) and the threshold is `sure_accuracy` itself."""
    probs = np.asarray(probs, dtype=np.float64)
    confidence, correct = probs.max(1), (probs.argmax(1) == np.asarray(labels)).astype(float)
    order = np.argsort(confidence, kind="stable")
    confidence, fitted = confidence[order], isotonic(correct[order])
    below = fitted < sure_accuracy
    if not below.any():
        return sure_accuracy
    if below.all():
        return float(np.ceil(confidence[-1] * 100) / 100)
    first_sure = int(np.argmax(~below))  # fitted is non-decreasing: the first index at or above the level
    return float(np.ceil(confidence[first_sure] * 100) / 100)


# ---------------------------------------------------------------------------------------------------------
# Logits on the calibration and test splits

@torch.inference_mode()
def image_logits(model, x: torch.Tensor, device, batch_size: int = 500) -> np.ndarray:
    return torch.cat([model(x[i:i + batch_size].to(device)).float().cpu()
                      for i in range(0, len(x), batch_size)]).numpy()


@torch.inference_mode()
def text_logits(model, texts, device, batch_size: int = 256) -> np.ndarray:
    out = []
    for i in range(0, len(texts), batch_size):
        ids, lengths = pad_batch([model.encode(tokenize(str(t))) for t in texts[i:i + batch_size]])
        out.append(model(ids.to(device), lengths).float().cpu())
    return torch.cat(out).numpy()


def stratified_halves(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of two disjoint halves with the same class mix: per class, a seeded shuffle cut in two."""
    rng = np.random.default_rng(seed)
    first, second = [], []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        first.append(members[: len(members) // 2])
        second.append(members[len(members) // 2:])
    return np.sort(np.concatenate(first)), np.sort(np.concatenate(second))


def _text_key(text: str) -> str:
    """Sentences compared across SST-2 and rt-polarity: tokenised, letters and digits only."""
    return re.sub(r"[^a-z0-9]", "", "".join(tokenize(text)))


def _rt_polarity(data_dir: Path):
    """(sentence, label) of rt-polarity (cp1252), negatives first."""
    for label, suffix in ((0, "neg"), (1, "pos")):
        with open(data_dir / "sentiment" / "rt-polaritydata" / f"rt-polarity.{suffix}", encoding="cp1252") as f:
            for line in f:
                yield line.strip(), label


def rt_polarity_sst2_test(data_dir: Path) -> tuple[list[str], np.ndarray]:
    """rt-polarity sentences that are SST-2 test sentences (SST was built from rt-polarity's reviews; its test
    split is never trained on and GLUE ships it unlabelled), labelled with rt-polarity's review polarity. Any
    sentence also found among the SST-2 train phrases or dev sentences is dropped."""
    with open(data_dir / "sentiment" / "SST-2" / "test.tsv", encoding="utf-8") as f:
        next(f)
        test_keys = {_text_key(line.rstrip("\n").split("\t", 1)[1]) for line in f}
    train_texts, _ = load_sst2(data_dir, "train")
    dev_texts, _ = load_sst2(data_dir, "dev")
    seen = {_text_key(t) for t in train_texts} | {_text_key(t) for t in dev_texts}
    texts, labels, taken = [], [], set()
    for text, label in _rt_polarity(data_dir):
        key = _text_key(text)
        if key in test_keys and key not in seen and key not in taken:
            taken.add(key)
            texts.append(text)
            labels.append(label)
    return texts, np.array(labels, dtype=np.int64)


def rt_polarity_agreement_with_sst2_dev(data_dir: Path) -> tuple[int, int]:
    """How often rt-polarity's review label equals SST-2's sentence label, on the dev sentences found in both."""
    dev_texts, dev_labels = load_sst2(data_dir, "dev")
    dev = {_text_key(t): y for t, y in zip(dev_texts, dev_labels)}
    pairs = [(label, dev[key]) for text, label in _rt_polarity(data_dir) if (key := _text_key(text)) in dev]
    return sum(a == b for a, b in pairs), len(pairs)


def splits(entry: dict, data_dir: Path, heldout_dir: Path, device, seed: int) -> dict:
    """Logits and labels on the calibration split and on the test split (where ECE is measured), with names."""
    model = load_model(entry, Path(entry["_weights_dir"]), device)
    task, train_size = entry["task"], entry.get("hyperparameters", {}).get("train_size")
    if task == "digits":
        x_train, y_train = load_mnist(data_dir, "train")
        test = load_heldout(heldout_dir, "mnist-test")
        start, stop = DIGITS_CALIBRATION.start, DIGITS_CALIBRATION.stop
        split = f"MNIST train images {start}..{stop - 1} ({stop - start:,}), left out of training"
        if train_size is None or train_size > start:
            split = (f"MNIST train images {start}..{stop - 1} ({stop - start:,}); PROVISIONAL: these weights "
                     f"trained on {train_size or 'all'} images, these included; re-run after retraining")
        elif entry.get("hyperparameters", {}).get("init"):
            split = (f"MNIST train images {start}..{stop - 1} ({stop - start:,}), left out of the fine-tuning; "
                     "seen by the earlier training it started from (retrain from scratch to make them unseen)")
        return dict(cal=(image_logits(model, digits.to_tensor(x_train[DIGITS_CALIBRATION], "cpu"), device),
                         y_train[DIGITS_CALIBRATION]),
                    test=(image_logits(model, digits.to_tensor(test["x"], "cpu"), device), test["y"]),
                    split=split, ece_split=f"MNIST test ({len(test['y']):,})", split_seed=None)
    if task == "objects":
        test = load_heldout(heldout_dir, "cifar-test")
        test_logits = image_logits(model, objects.to_tensor(test["x"], "cpu"), device)
        if train_size is not None and train_size < CIFAR_TRAIN_SIZE:
            cifar = load_cifar_subset(data_dir)
            return dict(cal=(image_logits(model, objects.to_tensor(cifar["x_train"][train_size:], "cpu"), device),
                             cifar["y_train"][train_size:]),
                        test=(test_logits, test["y"]), split_seed=None,
                        split=f"CIFAR-10 subset train images {train_size}..{CIFAR_TRAIN_SIZE - 1}, left out of "
                              f"training",
                        ece_split=f"CIFAR-10 subset test ({len(test['y']):,})")
        half_a, half_b = stratified_halves(test["y"], seed)
        return dict(cal=(test_logits, test["y"]), test=(test_logits, test["y"]), cross_fit=(half_a, half_b),
                    all_test=(test_logits, test["y"]), split_seed=seed,
                    split=f"CIFAR-10 subset test, all {len(test['y']):,} images (the served T is fitted on the test "
                          f"set itself: the model trained on all {CIFAR_TRAIN_SIZE:,} train images, so no other "
                          f"labelled image is unseen); the ECE figures are 2-fold cross-fitted, never in-sample: "
                          f"T fitted on class-stratified half A ({len(half_a)} images, seed {seed}) scores half B "
                          f"({len(half_b)}), T fitted on B scores A",
                    ece_split=f"CIFAR-10 subset test ({len(test['y']):,}), out of fold: each half scored with the "
                              f"T fitted on the other half, the {len(test['y']):,} scores pooled")
    if task == "sentiment":
        texts, labels = rt_polarity_sst2_test(data_dir)
        agree, found = rt_polarity_agreement_with_sst2_dev(data_dir)
        print(f"{entry['name']:15s} rt-polarity labels agree with SST-2's on {agree}/{found} dev sentences "
              f"({agree / found:.1%}): the calibration labels are almost, not quite, SST-2's")
        test = load_heldout(heldout_dir, "sst2-dev")
        return dict(cal=(text_logits(model, texts, device), labels),
                    test=(text_logits(model, test["texts"], device), test["y"]), split_seed=None,
                    split=f"rt-polarity sentences that are SST-2 test sentences ({len(labels):,}), "
                          f"rt-polarity's labels",
                    ece_split=f"SST-2 dev ({len(test['y']):,})")
    raise ValueError(f"no calibration split for task {task!r}")


# ---------------------------------------------------------------------------------------------------------
# One model, and the manifest

def cross_fitted(logits: np.ndarray, labels: np.ndarray, folds: tuple[np.ndarray, ...]) -> tuple[np.ndarray, list]:
    """Out-of-fold scores: each fold scored with the T fitted on the other folds; and those temperatures (rounded
    as the manifest records them, so the scores can be recomputed from it)."""
    probs, temperatures = np.empty(logits.shape, dtype=np.float64), []
    for fold in folds:
        rest = np.setdiff1d(np.arange(len(labels)), fold)
        temperatures.append(round(fit_temperature(logits[rest], labels[rest]), 4))
        probs[fold] = softmax(logits[fold], temperatures[-1])
    return probs, temperatures


def out_of_fold_nll(logits: np.ndarray, labels: np.ndarray, folds, temperatures) -> float:
    return float(sum(len(f) * nll(logits[f], labels[f], t) for f, t in zip(folds, temperatures)) / len(labels))


def calibrate(entry: dict, args, device) -> dict:
    s = splits(entry, args.data_dir, args.heldout_dir, device, args.seed)
    (cal_logits, cal_labels), (test_logits, test_labels) = s["cal"], s["test"]
    temperature = round(fit_temperature(cal_logits, cal_labels), 4)
    before, after = softmax(test_logits), softmax(test_logits, temperature)
    scored, nll_after, cal_probs, cal_y = after, nll(test_logits, test_labels, temperature), None, cal_labels
    folds = s.get("cross_fit")
    if folds is not None:  # T fitted on the test set itself: the ECE is measured out of fold
        scored, fold_temperatures = cross_fitted(test_logits, test_labels, folds)
        nll_after = out_of_fold_nll(test_logits, test_labels, folds, fold_temperatures)
        cal_probs = scored  # the threshold too is placed on scores whose T never saw their labels
    block = {
        "method": "temperature",
        "temperature": temperature,
        "split": s["split"],
        "split_size": len(cal_labels),
        "ece_split": s["ece_split"],
        "ece_size": len(test_labels),
        "bins": args.bins,
        "ece_before": round(expected_calibration_error(before, test_labels, args.bins), 4),
        "ece_after": round(expected_calibration_error(scored, test_labels, args.bins), 4),
        "nll_before": round(nll(test_logits, test_labels), 4),
        "nll_after": round(nll_after, 4),
        "ece_noise_floor": round(noise_floor(scored, args.bins, args.seed), 4),
        "low_confidence_below": low_confidence_threshold(
            cal_probs if cal_probs is not None else softmax(cal_logits, temperature), cal_y, args.sure_accuracy),
        "sure_accuracy": args.sure_accuracy,
        "weights_sha256": entry["sha256"],
    }
    if s["split_seed"] is not None:
        block["split_seed"] = s["split_seed"]  # stratified_halves(test labels, split_seed) gives both halves again
    if folds is not None:
        block["cross_fit"] = {
            "folds": len(folds), "split_seed": s["split_seed"], "fold_sizes": [len(f) for f in folds],
            "fold_temperatures": fold_temperatures,  # fold i's scores: softmax(logits / fold_temperatures[i])
            "ece_served_in_sample": round(expected_calibration_error(after, test_labels, args.bins), 4),
            "note": "temperature (served) is fitted on all the test images; ece_after, nll_after, ece_noise_floor "
                    "and low_confidence_below come from the pooled out-of-fold scores (fold i scored with "
                    "fold_temperatures[i], fitted on the other fold); ece_served_in_sample is the served T's own "
                    "ECE on the images it was fitted on (optimistic)",
        }
    if s["split_seed"] is not None and args.resplits:
        print_resplits(s["all_test"], args)
    if cal_probs is None:
        cal_probs = softmax(cal_logits, temperature)
    flagged = after.max(1) < block["low_confidence_below"]
    correct = after.argmax(1) == test_labels
    print(f"{entry['name']:15s} T = {temperature:.4f}  fitted on {s['split']}")
    print(f"{'':15s} calibration split: accuracy {(cal_probs.argmax(1) == cal_y).mean():.4f}, "
          f"NLL {nll(cal_logits, cal_labels):.4f} -> {nll(cal_logits, cal_labels, temperature):.4f}")
    if folds is not None:
        print(f"{'':15s} cross-fitted: fold temperatures {fold_temperatures}; the served T's in-sample ECE "
              f"{block['cross_fit']['ece_served_in_sample']:.4f}")
    print(f"{'':15s} {s['ece_split']}: ECE({args.bins} bins) {block['ece_before']:.4f} -> {block['ece_after']:.4f}, "
          f"NLL {block['nll_before']:.4f} -> {block['nll_after']:.4f}, accuracy {correct.mean():.4f} (unchanged); "
          f"a perfectly calibrated model would show ECE ~{block['ece_noise_floor']:.4f} here")
    print(f"{'':15s} low_confidence_below {block['low_confidence_below']:.2f}: flags {flagged.mean():.1%} of the "
          f"test answers (accuracy {correct[flagged].mean() if flagged.any() else float('nan'):.3f}; the rest "
          f"{correct[~flagged].mean():.3f})")
    return block


def print_resplits(test: tuple[np.ndarray, np.ndarray], args) -> None:
    """How much the cross-fitted figures depend on the cut: 2-fold cross-fitting over many random halvings."""
    logits, labels = test
    temperatures, before, after = [], [], []
    for seed in range(args.resplits):
        folds = stratified_halves(labels, seed)
        probs, fold_temperatures = cross_fitted(logits, labels, folds)
        temperatures.extend(fold_temperatures)
        before.append(expected_calibration_error(softmax(logits), labels, args.bins))
        after.append(expected_calibration_error(probs, labels, args.bins))
    after = np.array(after)
    print(f"{'':15s} over {args.resplits} random halvings, cross-fitted: fold T {np.mean(temperatures):.3f} "
          f"+- {np.std(temperatures):.3f}, "
          f"ECE {np.mean(before):.4f} -> {after.mean():.4f} (5-95 %: {np.quantile(after, 0.05):.4f}.."
          f"{np.quantile(after, 0.95):.4f}; <= 0.03 in {(after <= 0.03).mean():.0%})")


def write_calibrations(weights_dir: Path, blocks: dict[str, dict]) -> None:
    """Re-read the manifest from disk (others may have rewritten it) and replace only the `calibration` keys."""
    path = weights_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    for name, block in blocks.items():
        if manifest["models"][name]["sha256"] != block["weights_sha256"]:
            raise SystemExit(f"{name}: its weights changed while calibrating; run again")
        manifest["models"][name]["calibration"] = block
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")  # names as written
    tmp.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=[], help="model names (default: every classifier)")
    parser.add_argument("--weights-dir", type=Path, default=WEIGHTS_DIR)
    parser.add_argument("--heldout-dir", type=Path, default=HELDOUT_DIR)
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument("--bins", type=int, default=15, help="equal-width confidence bins of the ECE (default 15)")
    parser.add_argument("--sure-accuracy", type=float, default=0.8,
                        help="low_confidence_below is the score under which answers are right less often than "
                             "this on the calibration split (default 0.8)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the objects test halves (default 0)")
    parser.add_argument("--resplits", type=int, default=0,
                        help="objects cross-fitted on the test set: also print the spread over this many random "
                             "halvings")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, auto")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--dry-run", action="store_true", help="print the figures, leave the manifest alone")
    args = parser.parse_args()

    seed_everything(args.seed)
    torch.set_num_threads(args.threads)
    device = auto_device(args.device)
    manifest = json.loads((args.weights_dir / "manifest.json").read_text())["models"]
    names = args.models or list(manifest)
    unknown = [n for n in names if n not in manifest]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; the manifest has {', '.join(manifest)}")

    blocks, started = {}, time.perf_counter()
    for name in names:
        entry = {**manifest[name], "name": name, "_weights_dir": str(args.weights_dir)}
        blocks[name] = calibrate(entry, args, device)
    print(f"done in {time.perf_counter() - started:.0f} s on {device}")
    if args.dry_run:
        return
    write_calibrations(args.weights_dir, blocks)
    print(f"wrote the calibration of {', '.join(blocks)} into {args.weights_dir / 'manifest.json'}")


if __name__ == "__main__":
    main()
