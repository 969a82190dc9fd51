#!/usr/bin/env python3
"""Writes assets/models/arch1_fer2013.md from the run directory and an `evaluate` output.

Every number in the card is read, not typed: the recipe from runs/arch1_fer2013/config.json,
epochs and wall time from metrics.jsonl and state.json, the PublicTest accuracy, per-class
figures and confusion matrix from the output of

    cargo run --release -p training -- evaluate --model assets/models/arch1_fer2013.safetensors \
        --data ../shared/data/fer2013/fer2013.csv.gz --usage PublicTest > eval.txt

Usage:

    python3 tools/arch1_model_card.py --run runs/arch1_fer2013 --eval eval.txt [--interim] \
        [--tta flip=eval_flip.txt --tta flip-shift=eval_flip_shift.txt] \
        [--teacher-run runs/arch1_fer2013 --teacher-commit REV]

A run that was fine-tuned (`--init`) and distilled (`--teacher`) from an earlier model names
that model's run with --teacher-run (its wall time is added, its recipe is the first step of
the reproduction) and the commit whose `assets/models/arch1_fer2013.safetensors` it was.
"""
import argparse
import json
import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default=os.path.join(REPO, "runs", "arch1_fer2013"))
    ap.add_argument("--eval", required=True)
    ap.add_argument("--interim", action="store_true", help="the run is still going")
    ap.add_argument("--out", default=os.path.join(REPO, "assets", "models", "arch1_fer2013.md"))
    ap.add_argument("--tta", action="append", default=[], help="NAME=evaluate output with --tta NAME")
    ap.add_argument("--teacher-run", help="the run of the model this one started from and distilled")
    ap.add_argument("--teacher-commit", help="the commit that shipped that model")
    ap.add_argument("--note", default="", help="a sentence on how the run went (e.g. a budget changed on resume)")
    ap.add_argument("--start-model", help="the shipped model the run started from, when it has its own card "
                    "(e.g. arch1_fer2013_kd.safetensors); replaces --teacher-run")
    ap.add_argument("--soup", help="FIRST-LAST: the card's weights are the mean of these epochs (kept with "
                    "--keep-epochs) with BatchNorm statistics re-estimated (`soup --bn-data`)")
    ap.add_argument("--prior-run", action="append", default=[],
                    help="with --start-model: the runs behind that model, for the wall time")
    ap.add_argument("--soup-eval", help="evaluate output of the best single epoch, for comparison with the soup")
    args = ap.parse_args()

    def accuracy_of(text):
        m = re.search(r"^accuracy: (\d\.\d+) \((\d+)/(\d+)\)$", text, re.M)
        assert m, "no accuracy line in an evaluate output"
        return m

    cfg = json.load(open(os.path.join(args.run, "config.json")))
    state = json.load(open(os.path.join(args.run, "state.json")))
    metrics = [json.loads(l) for l in open(os.path.join(args.run, "metrics.jsonl")) if l.strip()]
    ev = open(args.eval).read()
    acc = accuracy_of(ev)
    table_start = ev.index("class ")
    per_class = ev[table_start:ev.index("\n\n", table_start)]
    conf_start = ev.index("truth\\pred")
    confusion = ev[conf_start:ev.index("accuracy:", conf_start)].rstrip()
    hours = sum(m["seconds"] for m in metrics) / 3600
    a = cfg["adam"]
    s = cfg["schedule"]
    aug = cfg["augment"]
    run_name = os.path.relpath(os.path.abspath(args.run), REPO)
    tta_rows = ""
    for item in args.tta:
        name, path = item.split("=", 1)
        t = accuracy_of(open(path).read())
        tta_rows += f"| PublicTest, `--tta {name}` | {float(t.group(1)):.4f} ({t.group(2)}/{t.group(3)}) |\n"
    init, distill = cfg.get("init"), cfg.get("distill")
    teacher_note, teacher_steps, wall = "", "", f"{hours:.1f} h for {len(metrics)} epochs (sum of the `seconds` column of `metrics.jsonl`)"
    if args.teacher_run:
        tcfg = json.load(open(os.path.join(args.teacher_run, "config.json")))
        tmetrics = [json.loads(l) for l in open(os.path.join(args.teacher_run, "metrics.jsonl")) if l.strip()]
        thours = sum(m["seconds"] for m in tmetrics) / 3600
        tname = os.path.relpath(os.path.abspath(args.teacher_run), REPO)
        tbest = max(tmetrics, key=lambda m: m["val_accuracy"])
        wall = (f"{hours:.1f} h for this run's {len(metrics)} epochs, after {thours:.1f} h for the "
                f"{len(tmetrics)} epochs of the model it started from (`{tname}`)")
        teacher_note = (
            f"\nThe run started from, and distilled, `arch1_fer2013.safetensors` as shipped at commit "
            f"`{args.teacher_commit or '?'}` (the best epoch, {tbest['epoch']}, of `{tname}`, "
            f"{tbest['val_accuracy']:.4f} on PublicTest, trained with `--preset {tcfg['preset']}` for "
            f"{tcfg['epochs']} epochs): the same network, so this is self-distillation (\"born-again\" "
            "networks, Furlanello et al. 2018) on a second cosine cycle.\n"
        )
        teacher_steps = f"""# 1. the model it starts from ({tcfg['epochs']} epochs of --preset {tcfg['preset']})
cargo run --release -p training -- train --arch arch1 --preset {tcfg['preset']} \\
  --data ../shared/data/fer2013/fer2013.csv.gz --run-dir {tname}
# 2. this run, from and distilled by step 1's best weights
"""
    if args.start_model:
        prior = []
        for r in args.prior_run:
            pm = [json.loads(l) for l in open(os.path.join(r, "metrics.jsonl")) if l.strip()]
            prior.append(f"{sum(m['seconds'] for m in pm) / 3600:.1f} h for the {len(pm)} epochs of "
                         f"`{os.path.relpath(os.path.abspath(r), REPO)}`")
        if prior:
            wall = f"{hours:.1f} h for this run's {len(metrics)} epochs, after " + " and ".join(prior)
        stem = args.start_model[: -len(".safetensors")]
        teacher_note = (
            f"\nThe run started from, and was distilled by, `{args.start_model}` (shipped beside this model; "
            f"its card, `{stem}.md`, gives its recipe and the run before it).\n"
        )
        teacher_steps = (
            f"# 1-2. {args.start_model} as its card says (or take the committed file); then\n"
        )
    extra = []
    if init:
        extra.append(f"- started from trained weights (`--init`, {os.path.basename(init)})")
    teachers = [distill["teacher"]] + distill.get("also", []) if distill else []
    if distill:
        who = " + ".join(f"`{os.path.basename(t)}`" for t in teachers)
        ensemble = (
            f", the teachers ({who}) averaged as an ensemble (mean of their softened softmaxes)"
            if len(teachers) > 1 else f", teacher {who}"
        )
        mirror = ", each teacher also seeing the mirrored batch (`--teacher-mirror`)" if distill.get("mirror") else ""
        extra.append(
            f"- knowledge distillation (`--teacher`): loss = {1 - distill['alpha']:g} x cross-entropy + "
            f"{distill['alpha']:g} x T^2 KL(teacher || student) at temperature T = {distill['temperature']:g}, "
            f"the teacher seeing the same augmented batch{ensemble}{mirror}"
        )
    if aug.get("random_erasing", 0) > 0:
        extra.append(
            f"- random erasing with probability {aug['random_erasing']} (a rectangle of 2-33% of the face "
            "filled with one random grey level)"
        )
    extra_lines = "".join(l + "\n" for l in extra)
    note = "\n" + args.note + "\n" if args.note else ""
    flags = []
    if init and distill and len(teachers) > 1:
        flags.append(f"--init {init}")
    elif init:
        flags.append("--init TEACHER")
    if distill and len(teachers) > 1:
        flags.extend(f"--teacher {t}" for t in teachers)
    elif distill:
        flags.append("--teacher TEACHER")
    if distill and distill.get("mirror"):
        flags.append("--teacher-mirror")
    if distill:
        if distill["alpha"] != 0.5:
            flags.append(f"--distill-alpha {distill['alpha']:g}")
        if distill["temperature"] != 4.0:
            flags.append(f"--distill-temperature {distill['temperature']:g}")
    if aug.get("random_erasing", 0) > 0:
        flags.append(f"--random-erasing {aug['random_erasing']:g}")
    if cfg["lr"] != 2e-3:
        flags.append(f"--lr {cfg['lr']:g}")
    if cfg["epochs"] != 60:
        flags.append(f"--epochs {cfg['epochs']}")
    flag_text = (" \\\n  " + " ".join(flags)) if flags else ""
    if args.teacher_run:
        flag_text = flag_text.replace("TEACHER", f"{tname}/best.safetensors")
    best = max(metrics, key=lambda m: m["val_accuracy"])
    status = (
        f"**Status: interim.** The run is still in progress ({state['epochs_done']} of "
        f"{cfg['epochs']} epochs); these are its best weights so far. The file and this card are "
        "replaced by the run's final best weights when it ends.\n\n"
        if args.interim
        else f"The run is complete ({state['epochs_done']} of {cfg['epochs']} epochs).\n\n"
    )
    weights = os.path.basename(args.out)[: -len(".md")] + ".safetensors"
    train_cmd = (f"cargo run --release -p training -- train --arch arch1 --preset {cfg['preset']} \\\n"
                 f"  --data ../shared/data/fer2013/fer2013.csv.gz --run-dir {run_name}{flag_text}")
    reproduce_all, repro_dir = "", run_name
    if args.soup:
        repro_dir = f"{run_name}-again"
        # The run's config.json holds values no flag sets (the schedule's floor): train from it.
        train_cmd = (f"# 3. this run (its config.json names {os.path.basename(init or '')} as start and teacher)\n"
                     f"cargo run --release -p training -- train --config {run_name}/config.json \\\n"
                     f"  --data ../shared/data/fer2013/fer2013.csv.gz --run-dir {repro_dir}")
        reproduce_all = ("# every step from nothing, in one command (about 4 h on 2 cores, resumable):\n"
                         "tools/reproduce_arch1_fer2013.sh\n# or step by step:\n")
    if a.get("sgd_momentum"):
        optimizer = (f"SGD with Nesterov momentum {a['sgd_momentum']} (`--sgd`), decoupled weight decay "
                     f"{a['weight_decay']} (times the learning rate, per step), L2 {a['l2']}")
    else:
        optimizer = (f"Adam with decoupled weight decay {a['weight_decay']} (L2 {a['l2']}), beta1 {a['beta1']}, "
                     f"beta2 {a['beta2']}, eps {a['eps']}")
    selected = (f"{state['best_epoch']} (best `PublicTest` accuracy; metrics.jsonl says "
                f"{best['val_accuracy']:.4f} at epoch {best['epoch']})")
    soup_rows, copy_step = "", f"cp {repro_dir}/best.safetensors assets/models/{weights}"
    if args.soup:
        first, last = (int(x) for x in args.soup.split("-"))
        selected = (f"none: the mean of epochs {first}-{last} (stochastic weight averaging, Izmailov et al. "
                    f"2018) with BatchNorm statistics re-estimated on the 28,709 training faces as they are "
                    f"(`soup --bn-data`); the range was chosen on PublicTest. The best single epoch, "
                    f"{best['epoch']}, scored {best['val_accuracy']:.4f} (metrics.jsonl)")
        if args.soup_eval:
            se = accuracy_of(open(args.soup_eval).read())
            soup_rows = (f"| PublicTest, best single epoch with its BatchNorm statistics re-estimated | "
                         f"{float(se.group(1)):.4f} ({se.group(2)}/{se.group(3)}) |\n")
        copy_step = (f"cargo run --release -p training -- soup --bn-data ../shared/data/fer2013/fer2013.csv.gz \\\n"
                     f"  --out assets/models/{weights} \\\n"
                     f"  $(for e in $(seq {first} {last}); do echo {repro_dir}/epochs/weights-$e.safetensors; done)")

    text = f"""# Model card: `{weights}`

{status}| | |
| --- | --- |
| network | ARCH-1 of Chowanda 2021 (Table 1: separable convolutions + residual, global average pooling), 293,951 parameters, exactly `models::Arch1` |
| input | 48x48 gray face, pixel / 255, framed like FER2013's faces (`perception::align`) |
| output | 7 classes, FER2013 order: angry, disgust, fear, happy, sad, surprise, neutral |
| trained by | this project's `training train`, run directory `{run_name}/` (`config.json`, `metrics.jsonl` committed) |
| data | FER2013 `Training` (28,709 faces) from `../shared/data/fer2013/fer2013.csv.gz`; model selection on `PublicTest` (3,589) only; `PrivateTest` never used |
| selected epoch | {selected} |
| PublicTest accuracy | **{float(acc.group(1)):.4f}** ({acc.group(2)}/{acc.group(3)}), single crop, no test-time augmentation |
{tta_rows}{soup_rows}| machine | 2-core x86-64 CPU (AVX2), no GPU, shared with development work during the run |
| wall time | {wall} |

## Recipe (`--preset {cfg['preset']}` and the options below, every value in `{run_name}/config.json`)

- {optimizer}; batch {cfg['batch_size']}
- learning rate {cfg['lr']}, schedule `{s['kind']}` with {s.get('warmup_epochs', 0)} warm-up epochs down to {s.get('min_lr', 0)} over {cfg['epochs']} epochs
- cross-entropy with label smoothing {cfg['label_smoothing']}
- augmentation as in the paper: rotation up to {aug['rotation_deg']} degrees, width shift {aug['width_shift']}, height shift {aug['height_shift']}, zoom {aug['zoom']}, horizontal flip {str(aug['horizontal_flip']).lower()}; seed {cfg['seed']}
- BatchNorm as Keras (eps {cfg['model']['bn']['eps']}, momentum {cfg['model']['bn']['momentum']})
{extra_lines}{teacher_note}{note}
Why not the paper's literal recipe (`--preset paper`: Adam 0.01, L2 0.2, batch 256): on
FER2013 its L2 of 0.2 collapses training (about 42%, see issue 5). Decoupled weight decay,
a cosine schedule and label smoothing train the same network without that collapse on CPU.

## PublicTest, per class

```
{per_class}
```

## PublicTest confusion matrix (rows: truth, columns: prediction)

```
{confusion}
```

## Reproduce

```
{reproduce_all}{teacher_steps}{train_cmd}
# continue after an interruption:
cargo run --release -p training -- train --run-dir {repro_dir} \\
  --data ../shared/data/fer2013/fer2013.csv.gz --resume
{copy_step}
# check the number above:
cargo run --release -p training -- evaluate --model assets/models/{weights} \\
  --data ../shared/data/fer2013/fer2013.csv.gz --usage PublicTest
```

## Limitations

- FER2013 is web-scraped, mostly frontal faces with label noise; accuracy on webcam faces in
  other lighting, poses, ages and ethnicities will differ. `disgust` has few training
  examples (436 of 28,709) and is rarely predicted.
- Expressions are not emotions: the model reads facial configuration, not inner state. Do
  not use it for decisions about people.
- Inputs must be aligned like FER2013 (use `perception::Pipeline`).

## Licence of the data

FER2013 (Goodfellow et al. 2013, ICML workshop / Kaggle) is distributed for research; these
weights are derived from it and inherit that research-only use. The code is under the
workspace licence.
"""
    with open(args.out, "w") as f:
        f.write(text)
    print(f"wrote {os.path.relpath(args.out, REPO)}: PublicTest {acc.group(1)}")


if __name__ == "__main__":
    main()
