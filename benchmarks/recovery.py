"""Benchmark: recovering pruned digits models by distillation and by sparsity-preserving QAT, against the baselines.

Three comparisons on scikit-learn's bundled digits, each arm starting from the same pruned model
and getting the same epochs and data, means over 3 seeds (the seed sets the split, the init and
the shuffling):

* ``kd_gain_pt``: PyTorch DigitsCNN, 75% of its channels removed (``prune_channels``), then
  fine-tuned with the task loss vs distilled from the dense model (the registry defaults T=1,
  alpha=0.5, chosen on the validation split by ``scripts/kd_defaults_search.py``; the former
  default T=2 also, as ``kd_t2_gain_pt``); test accuracy of distillation minus fine-tuning, in
  points (goal > 0). ``kd_gain_shifted_pt``: the same
  two arms (registry defaults) when both train on the same randomly shifted views of the training
  images (+-1 pixel, one shift per batch): the teacher memorised the training images, so its soft
  targets on them are nearly one-hot and carry nothing beyond the labels; on views it has not
  seen they do ("consistent teaching", Beyer et al. 2022).
* ``pqat_minus_ptq_pt``: PyTorch DigitsCNN pruned to 90% (global magnitude, masked fine-tune),
  then either fine-tuned in float and quantized after training (ONNX Runtime static int8, QDQ)
  or trained with PQAT and exported to int8 QDQ; both int8 files evaluated in ONNX Runtime
  (goal >= 0). ``pqat_zeros_preserved``: every PQAT file holds exactly the masks' zeros.
* ``keras_pqat_minus_ptq_pt``: the same with the Keras digits CNN (``prune_gradually`` to 90%),
  PTQ = float fine-tune with the pruned zeros held exactly (``KeepZeros``; ``keras_ptq_zeros_held``
  checks it) then full-int8 TFLite conversion, PQAT = ``pqat`` (its defaults) then int8 TFLite,
  both evaluated in the TFLite interpreter (goal >= 0); ``..._per_seed`` lists the seeds' gains.
* ``llm_kd_recovered_fraction``: the small LM of ``prunekit llm demo`` (cached; trained once when
  missing) pruned 2:4 by magnitude, then distilled from the dense model's cached top-64 logits
  (``TeacherLogitCache``, T=1) for one pass over 256 x 128 training tokens with the 2:4 zeros held
  (``Pruner.from_zeros``): the share of the perplexity rise (held-out text) that distillation wins
  back (goal >= 0.3).

Run: ``python benchmarks/recovery.py`` (``--quick``: one seed, fewer epochs; ``--arms keras``: only the
Keras comparison, any of ``kd pqat keras llm``). The last line is JSON; the figures of arms not run are null.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from statistics import mean

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from prunekit.artifacts.onnx_artifact import onnx_accuracy  # noqa: E402
from prunekit.data import load_digits  # noqa: E402
from prunekit.methods import get_method  # noqa: E402
from prunekit.torch import DigitsCNN, Pruner, evaluate, export_onnx, fit, make_loader, prune_channels, quantize_onnx  # noqa: E402
from prunekit.torch.recover import distill, pqat  # noqa: E402


def _torch_dense(split, seed: int, epochs: int) -> DigitsCNN:
    torch.manual_seed(seed)
    model = DigitsCNN()
    fit(model, make_loader(split.x_train, split.y_train, seed=seed), epochs=epochs, lr=3e-3, progress=False)
    return model.eval()


class ShiftedViews:
    """The batches of a loader, each shifted by the same random (dx, dy) in {-1, 0, 1} pixels (zero fill), seeded."""

    def __init__(self, loader, seed: int):
        self.loader, self.generator = loader, torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for x, y in self.loader:
            padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
            dx, dy = torch.randint(0, 3, (2,), generator=self.generator).tolist()
            yield padded[..., dy : dy + x.shape[-2], dx : dx + x.shape[-1]], y


def kd_arm(split, dense: DigitsCNN, seed: int, epochs: int) -> dict[str, float]:
    """Fine-tune vs distil the same 75%-channel-pruned student, on the training images and on shifted views of them."""
    test = make_loader(split.x_test, split.y_test, shuffle=False)
    student = prune_channels(copy.deepcopy(dense), torch.as_tensor(split.x_val[:2]), ratio=0.75).model
    pruned_accuracy = evaluate(student, test)
    tuned, distilled = copy.deepcopy(student), copy.deepcopy(student)
    torch.manual_seed(seed)
    fit(tuned, make_loader(split.x_train, split.y_train, seed=seed), epochs=epochs, lr=1e-3, progress=False)
    options = get_method("distill").options()  # the registry's defaults (T=1, alpha=0.5)
    torch.manual_seed(seed)
    distill(distilled, dense, make_loader(split.x_train, split.y_train, seed=seed), epochs=epochs, lr=1e-3,
            temperature=options["temperature"], alpha=options["alpha"], progress=False)  # fmt: skip
    soft = copy.deepcopy(student)
    torch.manual_seed(seed)
    distill(soft, dense, make_loader(split.x_train, split.y_train, seed=seed), epochs=epochs, lr=1e-3,
            temperature=2.0, alpha=0.5, progress=False)  # fmt: skip
    shifted_tuned, shifted_distilled = copy.deepcopy(student), copy.deepcopy(student)
    torch.manual_seed(seed)
    fit(shifted_tuned, ShiftedViews(make_loader(split.x_train, split.y_train, seed=seed), seed), epochs=epochs, lr=1e-3,
        progress=False)  # fmt: skip
    torch.manual_seed(seed)
    distill(shifted_distilled, dense, ShiftedViews(make_loader(split.x_train, split.y_train, seed=seed), seed), epochs=epochs,
            lr=1e-3, temperature=options["temperature"], alpha=options["alpha"], progress=False)  # fmt: skip
    return {"dense": evaluate(dense, test), "pruned": pruned_accuracy, "finetune": evaluate(tuned, test),
            "distill": evaluate(distilled, test), "distill_t2": evaluate(soft, test),
            "finetune_shifted": evaluate(shifted_tuned, test), "distill_shifted": evaluate(shifted_distilled, test)}  # fmt: skip


def pqat_arm(split, dense: DigitsCNN, seed: int, epochs: int, work: Path) -> dict[str, float]:
    """Prune to 90% + masked fine-tune, then float fine-tune + PTQ vs PQAT, both int8 in ONNX Runtime."""
    loader = make_loader(split.x_train, split.y_train, seed=seed)
    pruned = copy.deepcopy(dense)
    pruner = Pruner(pruned, 0.9, scope="global")
    pruner.prune()
    torch.manual_seed(seed)
    fit(pruned, loader, epochs=epochs, lr=1e-3, pruner=pruner, progress=False)
    pruner.strip()
    masks = {n: (p != 0) for n, p in pruned.named_parameters() if n.endswith("weight") and p.dim() > 1}
    # PTQ arm: the same recovery epochs in float (masks held), then ONNX Runtime's static int8
    ptq_model = copy.deepcopy(pruned)
    ptq_pruner = Pruner(ptq_model, 0.9, scope="global")
    ptq_pruner.prune()  # the magnitudes of a 90%-pruned model re-select its own mask
    torch.manual_seed(seed)
    fit(ptq_model, loader, epochs=epochs, lr=1e-4, pruner=ptq_pruner, progress=False)
    ptq_pruner.strip()
    export_onnx(ptq_model.eval(), torch.as_tensor(split.x_val[:2]), work / "ptq.onnx")
    quantize_onnx(work / "ptq.onnx", work / "ptq.int8.onnx", "static", calibration_data=split.x_val)
    # PQAT arm
    pqat_model = copy.deepcopy(pruned)
    torch.manual_seed(seed)
    controller = pqat(pqat_model, loader, epochs=epochs, lr=1e-4, progress=False)
    result = controller.export_onnx(torch.as_tensor(split.x_val[:128]), work / "pqat.int8.onnx")
    controller.close()
    preserved = all(result.zeros[name] == int((~mask).sum()) for name, mask in masks.items())
    return {"pruned_fp32": evaluate(pruned, make_loader(split.x_test, split.y_test, shuffle=False)),
            "ptq": onnx_accuracy(work / "ptq.int8.onnx", split.x_test, split.y_test),
            "pqat": onnx_accuracy(work / "pqat.int8.onnx", split.x_test, split.y_test),
            "zeros_preserved": preserved, "pqat_sqnr_db": result.sqnr_db}  # fmt: skip


def keras_arm(seed: int, epochs: int, dense_epochs: int) -> dict[str, float] | None:
    if importlib.util.find_spec("keras") is None or importlib.util.find_spec("tensorflow") is None:
        return None
    import keras

    import prunekit.keras as pk
    from prunekit.keras.deploy.tflite import TFLiteModel, convert_to_tflite
    from prunekit.keras.recover import export_tflite
    from prunekit.keras.recover import pqat as keras_pqat
    from prunekit.keras.recover.handlers import KeepZeros

    split = pk.load_digits_nhwc(seed=seed)
    keras.utils.set_random_seed(seed)
    dense = pk.digits_cnn()
    dense.compile(optimizer=keras.optimizers.Adam(3e-3), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    dense.fit(split.x_train, split.y_train, epochs=dense_epochs, batch_size=32, verbose=0)
    pruned = pk.prune_gradually(dense, split.x_train, split.y_train, 0.9, epochs=max(2, dense_epochs // 2), lr=1e-3).model

    def tflite_accuracy(flatbuffer: bytes) -> float:
        return float((TFLiteModel(flatbuffer).predict(split.x_test).argmax(-1) == split.y_test).mean())

    # PTQ arm: the same recovery epochs in float with the pruned zeros held exactly, then int8 TFLite
    held = keras.models.clone_model(pruned)
    held.set_weights(pruned.get_weights())
    keras.utils.set_random_seed(seed)
    held.compile(optimizer=keras.optimizers.Adam(1e-4), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    held.fit(split.x_train, split.y_train, epochs=epochs, batch_size=64, verbose=0, callbacks=[KeepZeros(held)])
    ptq_zeros_held = all(
        np.array_equal(np.asarray(a) == 0, np.asarray(b) == 0) for a, b in zip(pruned.weights, held.weights) if len(a.shape) > 1
    )
    ptq = tflite_accuracy(convert_to_tflite(held, "int8", split.x_val))
    keras.utils.set_random_seed(seed)
    run = keras_pqat(pruned, split.x_train, split.y_train, epochs=epochs, lr=1e-4)
    flatbuffer, zeros = export_tflite(run.model, split.x_val)
    return {"pruned_ptq": tflite_accuracy(convert_to_tflite(pruned, "int8", split.x_val)), "ptq": ptq,
            "pqat": tflite_accuracy(flatbuffer), "zeros_preserved": zeros == run.mask_zeros,
            "ptq_zeros_held": ptq_zeros_held}  # fmt: skip


def llm_arm(quick: bool) -> dict[str, float] | None:
    """Perplexity of the small LM dense, 2:4-pruned, and 2:4-pruned then distilled from cached teacher logits."""
    if importlib.util.find_spec("transformers") is None:
        return None
    import prunekit.llm as pl
    from prunekit.torch import Pruner
    from prunekit.torch.recover.teacher_cache import TeacherLogitCache, distill_from_cache

    torch.manual_seed(0)
    model_dir = pl.ensure_small_lm(log=lambda line: print(line, file=sys.stderr))
    dense, tokenizer = pl.load_model_dir(model_dir)
    valid, train = model_dir / "valid.txt", model_dir / "train.txt"

    def ppl(model: torch.nn.Module) -> float:
        return pl.perplexity(model, valid, tokenizer, max_tokens=10_000 if quick else 30_000).perplexity

    student = copy.deepcopy(dense)
    pl.prune(student, train, tokenizer=tokenizer, method="magnitude", pattern="2:4", n_samples=32, seq_len=128)
    tokens = pl.calibration_tokens(train, tokenizer, n_samples=64 if quick else 256, seq_len=128, seed=1)
    cache = TeacherLogitCache(dense, [tokens[i : i + 16] for i in range(0, len(tokens), 16)], top_k=64, temperature=1.0)
    before = ppl(student)
    pruner = Pruner.from_zeros(student)
    distill_from_cache(student, cache, epochs=1, lr=1e-4, pruner=pruner, progress=False)
    if pruner is not None:
        pruner.strip()
    return {"dense": ppl(dense), "pruned": before, "distilled": ppl(student)}


ARMS = ("kd", "pqat", "keras", "llm")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one seed and fewer epochs (a smoke run)")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS), help="run only these comparisons")
    args = parser.parse_args()
    arms = set(args.arms)
    seeds = [0] if args.quick else [0, 1, 2]
    dense_epochs, recover_epochs = (4, 1) if args.quick else (10, 3)
    torch.set_num_threads(1)  # the tiny CNN trains fastest on one thread of the shared 2-core machines
    started = time.perf_counter()
    kd, pq, kq = [], [], []
    with tempfile.TemporaryDirectory(prefix="prunekit-recovery-") as tmp:
        for seed in seeds:
            if arms & {"kd", "pqat"}:
                split = load_digits(seed=seed)
                dense = _torch_dense(split, seed, dense_epochs)
            if "kd" in arms:
                kd.append(kd_arm(split, dense, seed, recover_epochs))
                print(f"seed {seed}: kd {kd[-1]}", file=sys.stderr)
            if "pqat" in arms:
                work = Path(tmp) / f"seed{seed}"
                work.mkdir()
                pq.append(pqat_arm(split, dense, seed, recover_epochs, work))
                print(f"seed {seed}: pqat {pq[-1]}", file=sys.stderr)
            result = keras_arm(seed, recover_epochs, dense_epochs) if "keras" in arms else None
            if result is not None:
                kq.append(result)
                print(f"seed {seed}: keras {result}", file=sys.stderr)

    def avg(rows, key):
        return mean(float(r[key]) for r in rows)

    def gain(rows, method, baseline):
        return round(100 * (avg(rows, method) - avg(rows, baseline)), 2) if rows else None

    print(f"\nrecovery on digits, mean over seeds {seeds}, {recover_epochs} recovery epoch(s) per arm")
    print(f"{'comparison':44} {'baseline':>9} {'method':>9} {'gain pt':>8}")
    table = [("torch 75% channels: finetune vs distill", kd, "finetune", "distill"),
             ("torch 75% channels: finetune vs distill T=2", kd, "finetune", "distill_t2"),
             ("torch 75% channels, shifted: ft vs distill", kd, "finetune_shifted", "distill_shifted"),
             ("torch 90% + int8 (ORT): PTQ vs PQAT", pq, "ptq", "pqat"),
             ("keras 90% + int8 (TFLite): PTQ vs PQAT", kq, "ptq", "pqat")]  # fmt: skip
    for label, rows, baseline, method in table:
        if rows:
            print(f"{label:44} {avg(rows, baseline):9.2%} {avg(rows, method):9.2%} {gain(rows, method, baseline):+8.2f}")
    if kd and pq:
        print(f"(dense torch {avg(kd, 'dense'):.2%}, 75%-channel pruned before recovery {avg(kd, 'pruned'):.2%}, "
              f"90% pruned fp32 {avg(pq, 'pruned_fp32'):.2%}, PQAT int8 SQNR vs fake-quant {avg(pq, 'pqat_sqnr_db'):.1f} dB)")  # fmt: skip
    if kq:
        print(f"(keras 90% pruned, int8 before recovery {avg(kq, 'pruned_ptq'):.2%})")
    print(f"({time.perf_counter() - started:.0f} s)")
    llm = llm_arm(args.quick) if "llm" in arms else None
    if llm is not None:
        print(
            f"small LM 2:4 (magnitude): perplexity dense {llm['dense']:.3f}, pruned {llm['pruned']:.3f}, "
            f"distilled {llm['distilled']:.3f}"
        )
    recovered = None if llm is None else (llm["pruned"] - llm["distilled"]) / (llm["pruned"] - llm["dense"])

    def mean_of(rows, key, digits=4):
        return round(avg(rows, key), digits) if rows else None

    figures = {
        "benchmark": "recovery",
        "seeds": seeds,
        "recover_epochs": recover_epochs,
        "arms": sorted(arms),
        "kd_gain_pt": gain(kd, "distill", "finetune"),
        "kd_t2_gain_pt": gain(kd, "distill_t2", "finetune"),
        "kd_finetune_accuracy": mean_of(kd, "finetune"),
        "kd_distill_accuracy": mean_of(kd, "distill"),
        "kd_gain_shifted_pt": gain(kd, "distill_shifted", "finetune_shifted"),
        "kd_shifted_finetune_accuracy": mean_of(kd, "finetune_shifted"),
        "kd_shifted_distill_accuracy": mean_of(kd, "distill_shifted"),
        "pqat_minus_ptq_pt": gain(pq, "pqat", "ptq"),
        "ptq_int8_accuracy": mean_of(pq, "ptq"),
        "pqat_int8_accuracy": mean_of(pq, "pqat"),
        "pqat_zeros_preserved": all(r["zeros_preserved"] for r in pq) if pq else None,
        "keras_pqat_minus_ptq_pt": gain(kq, "pqat", "ptq"),
        "keras_pqat_minus_ptq_pt_per_seed": [round(100 * (r["pqat"] - r["ptq"]), 2) for r in kq] if kq else None,
        "keras_ptq_int8_accuracy": mean_of(kq, "ptq"),
        "keras_pqat_int8_accuracy": mean_of(kq, "pqat"),
        "keras_pqat_zeros_preserved": all(r["zeros_preserved"] for r in kq) if kq else None,
        "keras_ptq_zeros_held": all(r["ptq_zeros_held"] for r in kq) if kq else None,
        "llm_kd_recovered_fraction": None if recovered is None else round(recovered, 3),
        "llm_ppl": None if llm is None else {k: round(v, 4) for k, v in llm.items()},
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
