"""``data/build.py import SRC OUT``: real-image trajectories -> a procpaint dataset. A good folder
imports, validates, loads and packs (through the training DataModule too); images of any size are
bucketed by BAGEL's rule; each kind of bad record is named by file and line; a failed import leaves
no output directory behind."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from procpaint.datasets import TrajectoryDataset, validate
from procpaint.datasets.buckets import BAGEL_VAE, BAGEL_VIT, ImageBucket
from procpaint.datasets.importer import ImportProblems, import_trajectories
from procpaint.sequence.packing import Packer
from procpaint.sequence.tokenizer import TextTokenizer, build_word_level

ROOT = Path(__file__).resolve().parents[2]
DEBUG = ROOT / "train/configs/debug.yaml"
SMALL = ImageBucket(64, 32, 16)

PLAN = {"plan": "<ins>draw a red sofa</ins><des>a red sofa in a room</des>"}
CRIT = {"critique": "the sofa is blue, not red."}
REFINE = {"refine": "<refine>make the sofa red</refine>"}
OK = {"critique": "the image matches the plan."}


def _png(path: Path, w: int, h: int, mode: str = "RGB", color=(200, 40, 40)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (w, h), color if mode == "RGB" else (*color, 128)).save(path)


def _write(src: Path, records, name: str = "trajectories.jsonl") -> Path:
    path = src / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def _good_records():
    return [
        {"id": "sofa", "prompt": "a red sofa", "tag": "colors",
         "steps": [PLAN, {"image": "img/draft.jpg"}, CRIT, REFINE, {"image": "img/fixed.png"},
                   {"plan": "<ins>add a cat</ins><des>a red sofa and a cat</des>"}, {"image": "img/wide.png"},
                   OK]},
        {"prompt": "a green box",
         "steps": [{"plan": "<ins>draw a box</ins><des>a green box</des>"}, {"image": "img/tiny.png"}, OK]},
    ]


@pytest.fixture
def src(tmp_path) -> Path:
    """Images of odd sizes and kinds: a 640x480 JPEG, a tall RGBA PNG, a 33x17 PNG, a wide strip."""
    s = tmp_path / "src"
    (s / "img").mkdir(parents=True)
    Image.new("RGB", (640, 480), (200, 40, 40)).save(s / "img/draft.jpg", quality=90)
    _png(s / "img/fixed.png", 100, 300, "RGBA")
    _png(s / "img/wide.png", 2000, 100)
    _png(s / "img/tiny.png", 33, 17)
    _write(s, _good_records())
    return s


def _leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.glob(f".{out.name}.*"))


# ---------------------------------------------------------------- bucketing (BAGEL's rule)
# Worked by hand from the rule in buckets.py: (bucket, source h x w) -> stored h x w.
BUCKET_CASES = [
    (BAGEL_VAE, (480, 640), (512, 688)),     # short side up to 512; 682.7 -> 683 -> 43 strides
    (BAGEL_VAE, (3000, 4000), (768, 1024)),  # long side down to 1024
    (BAGEL_VAE, (10, 10), (512, 512)),       # tiny: up to the min side
    (BAGEL_VAE, (100, 2000), (48, 1024)),    # min side -> 512x10240, pixel step -> 176x3520, max side wins
    (BAGEL_VIT, (480, 640), (476, 644)),     # ViT stride 14: 34 and 46 patches
    (SMALL, (300, 100), (64, 16)),           # tall: min side blows the long side up, max side wins
    (SMALL, (17, 33), (32, 64)),
    # the pixel budget's area ratio is applied as a linear factor, as BAGEL does (sqrt would give 1024)
    (ImageBucket(4096, 16, 16, 1024 * 1024), (2048, 2048), (512, 512)),
]


@pytest.mark.parametrize("bucket,size,expected", BUCKET_CASES)
def test_bucket_sizes_follow_bagels_rule(bucket, size, expected):
    h, w = bucket.size(*size)
    assert (h, w) == expected
    assert h % bucket.stride == 0 and w % bucket.stride == 0


def test_bucket_parse_and_rejections():
    assert ImageBucket.parse("1024,512,16") == BAGEL_VAE
    assert ImageBucket.parse("64,32,16,2048") == ImageBucket(64, 32, 16, 2048)
    with pytest.raises(ValueError, match="MAX_SIDE,MIN_SIDE,STRIDE"):
        ImageBucket.parse("64x32")
    with pytest.raises(ValueError, match="max_side >= min_side"):
        ImageBucket(32, 64, 16)


def test_stored_images_have_the_bucket_sizes_the_records_declare(src, tmp_path):
    out = tmp_path / "out"
    man = import_trajectories(src, out)                    # BAGEL's VAE rule, the default
    recs = [json.loads(ln) for ln in (out / "multiturn/shard-00000.jsonl").read_text().splitlines()]
    got = {}
    for rec in recs:
        for seg in rec["segments"]:
            if seg["type"] == "image":
                with Image.open(out / seg["path"]) as im:
                    assert (im.height, im.width) == (seg["height"], seg["width"])
                    assert im.mode == "RGB"
                got[seg["source"]] = (seg["height"], seg["width"], tuple(seg["source_size"]))
    # 300x100: min side -> 1536x512, max side -> 1024x341 -> 336; 17x33: 512x994 -> 992
    assert got == {"img/draft.jpg": (512, 688, (480, 640)), "img/fixed.png": (1024, 336, (300, 100)),
                   "img/wide.png": (48, 1024, (100, 2000)), "img/tiny.png": (512, 992, (17, 33))}
    assert man["image_transform"]["vae"] == {**BAGEL_VAE.to_dict()}
    vit = ImageBucket.from_dict(man["image_transform"]["vit"])
    assert vit == BAGEL_VIT and vit.size(*got["img/draft.jpg"][2]) == (476, 644)   # the ViT size of a source
    assert man["subsets"]["multiturn"]["image_sizes"] == {"1024x336": 1, "48x1024": 1, "512x688": 1,
                                                          "512x992": 1}


# ---------------------------------------------------------------- a good folder
def test_good_folder_imports_validates_loads_and_packs(src, tmp_path):
    out = tmp_path / "out"
    man = import_trajectories(src, out, bucket=SMALL)
    assert validate(out) == []
    assert _leftovers(out) == []
    assert man["subsets"]["multiturn"]["samples"] == 2 and man["subsets"]["multiturn"]["images"] == 4
    assert man["subsets"]["conflict"] == {"shards": [], "samples": 0, "images": 0}
    samples = {s.id: s for s in TrajectoryDataset(out, image_size=None, shuffle=False, on_error="error")}
    assert set(samples) == {"sofa", "trajectories-2"}                # default id: file stem + line
    sofa = samples["sofa"]
    assert [getattr(s, "role", "image") for s in sofa.segments] == [
        "prompt", "plan", "image", "critique", "refine", "image", "plan", "image", "critique"]
    # the draft its refine corrects is context; every other image and text (not the prompt) is a target
    assert [s.loss for s in sofa.segments] == [False, True, False, True, True, True, True, True, True]
    assert sofa.eos and sofa.kind == "multiturn" and sofa.meta["tag"] == "colors"
    shapes = [tuple(s.image.shape) for s in sofa.segments if hasattr(s, "image")]
    assert shapes == [(3, 48, 64), (3, 64, 16), (3, 16, 64)]
    # RGB in [-1, 1]: the JPEG's red survives; the half-transparent PNG is composited on white, not black
    draft, fixed = sofa.segments[2].image, sofa.segments[5].image
    assert draft[0].mean() > 0.5 and draft[1].mean() < -0.5
    assert fixed[0].mean() > 0.7 and 0.0 < fixed[1].mean() < 0.3
    # bucketed, non-square images pack as they are (the sequence layer takes any h x w latent grid)
    tok = TextTokenizer(out / "tokenizer.json")
    packer = Packer(tok, pixels_per_token=16, max_tokens=256, overflow_buffer=0)
    packs = [p for s in samples.values() for p in packer.add(s)] + packer.flush()
    assert sum(p.images.shape[0] for p in packs) == 4 and sum(p.num_samples for p in packs) == 2
    # latent tokens per image (16 px each): draft 3x4 (context: clean copy only); fixed 4x1, wide 1x4 and
    # the box's 2x4 are targets (noised copy + clean copy)
    assert sum(int(p.latent_noised.numel()) for p in packs) == 12 + 2 * (4 + 4 + 8)
    assert sum(int(p.latent_noised.sum()) for p in packs) == 4 + 4 + 8


def _tree(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_workers_give_byte_identical_output(src, tmp_path):
    _write(src, [*_good_records(), *[{**r, "id": f"{r.get('id', 'box')}-{k}"} for k in range(3)
                                     for r in _good_records()]])
    import_trajectories(src, tmp_path / "one", bucket=SMALL, shard_size=3)
    import_trajectories(src, tmp_path / "two", bucket=SMALL, shard_size=3, workers=2)
    one, two = _tree(tmp_path / "one"), _tree(tmp_path / "two")
    assert one == two and len([k for k in one if k.endswith(".jsonl")]) == 3


def test_jpeg_storage_loads_at_the_declared_sizes(src, tmp_path):
    out = tmp_path / "out"
    man = import_trajectories(src, out, bucket=SMALL, image_format="jpeg")
    assert validate(out) == [] and man["image_transform"]["stored"].startswith("jpeg")
    paths = [seg["path"] for ln in (out / "multiturn/shard-00000.jsonl").read_text().splitlines()
             for seg in json.loads(ln)["segments"] if seg["type"] == "image"]
    assert len(paths) == 4 and all(p.endswith(".jpg") for p in paths)
    with Image.open(out / paths[0]) as im:
        assert im.format == "JPEG" and (im.height, im.width) == (48, 64)
    assert len(list(TrajectoryDataset(out, image_size=None, on_error="error"))) == 2


def test_training_datamodule_packs_a_batch_from_an_imported_dataset(src, tmp_path):
    """What ``python train/fit.py data.root=OUT`` reads: default data.subsets (the empty conflict and
    alignment subsets are there), images resized to data.image_size (32 in the debug config)."""
    from procpaint.config import load_config
    from procpaint.training.datamodule import ProcPaintDataModule

    out = tmp_path / "out"
    import_trajectories(src, out, bucket=SMALL)
    cfg = load_config(DEBUG, [f"data.root={out}", f"trainer.default_root_dir={tmp_path / 'runs'}",
                              "logging.trajectory_every_n_steps=0", "logging.final_eval_prompts=0"])
    dm = ProcPaintDataModule(cfg)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.val_root is None
    batch = next(iter(dm.train_dataloader()))
    assert batch.images.shape[1:] == (3, 32, 32)
    assert batch.images.shape[0] >= 2
    words = set(TextTokenizer(out / "tokenizer.json").tok.get_vocab())
    assert {"sofa", "cat", "red", "<ins>", "<|vision_start|>"} <= words


# ---------------------------------------------------------------- bad records: file and line
def _bad(kind: str, src: Path):
    """(record line 2 of trajectories.jsonl, field, message pattern)."""
    steps = [PLAN, {"image": "img/draft.jpg"}, CRIT]
    if kind == "missing_image":
        return {"prompt": "p", "steps": [PLAN, {"image": "img/nope.png"}, OK]}, "steps[1].image", \
            "image file img/nope.png does not exist"
    if kind == "unreadable_image":
        (src / "img/junk.png").write_bytes(os.urandom(200))
        return {"prompt": "p", "steps": [PLAN, {"image": "img/junk.png"}, OK]}, "steps[1].image", \
            "image img/junk.png does not decode"
    if kind == "truncated_jpeg":
        data = (src / "img/draft.jpg").read_bytes()
        (src / "img/cut.jpg").write_bytes(data[: len(data) // 3])
        return {"prompt": "p", "steps": [PLAN, {"image": "img/cut.jpg"}, OK]}, "steps[1].image", \
            "image img/cut.jpg does not decode"
    if kind == "escaping_path":
        return {"prompt": "p", "steps": [PLAN, {"image": "../outside.png"}, OK]}, "steps[1].image", \
            "must be a path relative to"
    if kind == "plan_tag":
        return {"prompt": "p", "steps": [{"plan": "<ins>draw a sofa</ins> a sofa"}, *steps[1:]]}, \
            "steps[0].plan", "a plan must be <ins>...</ins><des>...</des>"
    if kind == "refine_tag":
        return {"prompt": "p", "steps": [*steps, {"refine": "make it red"}, {"image": "img/tiny.png"}]}, \
            "steps[3].refine", "a refine text must be <refine>...</refine>"
    if kind == "tag_in_critique":
        return {"prompt": "p", "steps": [*steps[:2], {"critique": "wrong <ins>colour</ins>"}]}, \
            "steps[2].critique", "tags are not allowed in a critique segment"
    if kind == "special_token":
        return {"prompt": "p", "steps": [*steps[:2], {"critique": "it ends <eos> too early"}]}, \
            "steps[2].critique", "the special token <eos> is not allowed in text"
    if kind == "image_before_plan":
        return {"prompt": "p", "steps": [{"image": "img/draft.jpg"}, PLAN, CRIT]}, "steps[0]", \
            "'image' where the trajectory grammar expects a plan"
    if kind == "plan_without_critique":
        return {"prompt": "p", "steps": [*steps[:2], PLAN, {"image": "img/tiny.png"}, OK]}, "steps[2]", \
            "'plan' where the trajectory grammar expects a critique of the image"
    if kind == "refine_without_image":
        return {"prompt": "p", "steps": [*steps, REFINE]}, "steps", \
            "the trajectory ends where the grammar expects the refined image"
    if kind == "ends_after_image":
        return {"prompt": "p", "steps": steps[:2]}, "steps", \
            "the trajectory ends where the grammar expects a critique of the image"
    if kind == "unknown_step":
        return {"prompt": "p", "steps": [PLAN, {"picture": "img/draft.jpg"}, CRIT]}, "steps[1]", \
            "must be one of"
    if kind == "missing_prompt":
        return {"steps": steps}, "prompt", "missing or empty"
    if kind == "duplicate_id":
        return {"id": "sofa", "prompt": "p", "steps": steps}, "id", \
            "'sofa' already used at .*trajectories.jsonl:1"
    if kind == "bad_json":
        return '{"prompt": "p", "steps": [', "record", "not valid JSON"
    raise AssertionError(kind)


BAD_KINDS = ["missing_image", "unreadable_image", "truncated_jpeg", "escaping_path", "plan_tag", "refine_tag",
             "tag_in_critique", "special_token", "image_before_plan", "plan_without_critique",
             "refine_without_image",
             "ends_after_image", "unknown_step", "missing_prompt", "duplicate_id", "bad_json"]


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_each_bad_record_is_named_by_file_and_line_and_nothing_is_written(kind, src, tmp_path):
    bad, field, message = _bad(kind, src)
    good = _good_records()
    path = _write(src, [good[0], bad, good[1]])
    out = tmp_path / "out"
    with pytest.raises(ImportProblems) as exc:
        import_trajectories(src, out, bucket=SMALL)
    assert len(exc.value.problems) == 1, exc.value.problems
    assert re.match(re.escape(f"{path}:2: {field}: ") + message, exc.value.problems[0]), exc.value.problems
    assert not out.exists() and _leftovers(out) == []


def test_unknown_words_for_a_given_tokenizer_are_named_by_file_and_line(src, tmp_path):
    tok_path = tmp_path / "tok.json"
    TextTokenizer(build_word_level("a red sofa in room draw the is blue not matches image plan cat add and "
                                   "green box , .".split())).save(tok_path)         # no "make"
    with pytest.raises(ImportProblems) as exc:
        import_trajectories(src, tmp_path / "out", bucket=SMALL, tokenizer=tok_path)
    assert exc.value.problems == [f"{src / 'trajectories.jsonl'}:1: steps[3].refine: unknown words ['make'] "
                                  "for the tokenizer"]
    assert not (tmp_path / "out").exists()


def test_every_bad_record_is_listed_not_just_the_first(src, tmp_path):
    path = _write(src, [_bad("missing_image", src)[0], _good_records()[1], _bad("plan_tag", src)[0]])
    with pytest.raises(ImportProblems) as exc:
        import_trajectories(src, tmp_path / "out", bucket=SMALL)
    assert [p.split(": ")[0] for p in exc.value.problems] == [f"{path}:1", f"{path}:3"]


def test_skip_leaves_bad_records_out_and_lists_them(src, tmp_path):
    good = _good_records()
    path = _write(src, [good[0], _bad("missing_image", src)[0], good[1], _bad("bad_json", src)[0]])
    out = tmp_path / "out"
    man = import_trajectories(src, out, bucket=SMALL, on_error="skip")
    assert man["subsets"]["multiturn"]["samples"] == 2
    assert man["imported"]["skipped"] == 2 and man["imported"]["records"] == 4
    assert [p.split(": ")[0] for p in man["imported"]["problems"]] == [f"{path}:2", f"{path}:4"]
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["imported"]["problems"] == man["imported"]["problems"]
    assert validate(out) == []
    assert {s.id for s in TrajectoryDataset(out, on_error="error")} == {"sofa", "trajectories-3"}


def test_skip_with_no_good_record_is_still_an_error(src, tmp_path):
    _write(src, [_bad("missing_image", src)[0]])
    with pytest.raises(ImportProblems, match="no good trajectory"):
        import_trajectories(src, tmp_path / "out", bucket=SMALL, on_error="skip")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- nothing half-written
def test_a_failure_while_writing_removes_the_temporary_directory(src, tmp_path, monkeypatch):
    out = tmp_path / "out"
    calls = []

    def write_bytes(self, data):
        calls.append(self)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(self, data)

    real = Path.write_bytes
    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    with pytest.raises(OSError, match="No space left"):
        import_trajectories(src, out, bucket=SMALL)
    assert len(calls) == 2 and str(calls[0]).startswith(str(tmp_path / ".out.import-"))
    assert not out.exists() and _leftovers(out) == []


def test_an_existing_output_is_refused_untouched_or_replaced_whole(src, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="exists and is not empty"):
        import_trajectories(src, out, bucket=SMALL)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    import_trajectories(src, out, bucket=SMALL, overwrite=True)
    assert not (out / "keep.txt").exists() and validate(out) == [] and _leftovers(out) == []


def test_a_temporary_directory_of_a_dead_import_is_removed(src, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen(["true"])
    proc.wait()                                               # a pid that no longer runs
    stale = tmp_path / f".out.import-{proc.pid}"
    (stale / "multiturn").mkdir(parents=True)
    import_trajectories(src, out, bucket=SMALL)
    assert not stale.exists() and validate(out) == []


def test_sigterm_during_an_import_leaves_nothing(src, tmp_path):
    """The CLI blocks reading an image from a named pipe (after its temporary directory exists) and
    gets SIGTERM: exit 143, no OUT, no temporary directory."""
    os.mkfifo(src / "img/pipe.png")
    _write(src, [{"prompt": "p", "steps": [PLAN, {"image": "img/pipe.png"}, OK]}])
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, str(ROOT / "data/build.py"), "import", str(src), str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        deadline = time.monotonic() + 120
        while not _leftovers(out) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _leftovers(out) == [f".out.import-{proc.pid}"], proc.poll()
        time.sleep(0.5)                                         # now blocked in the pipe's open()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 143, proc.stderr.read()
    finally:
        proc.kill()
    assert not out.exists() and _leftovers(out) == []


# ---------------------------------------------------------------- the CLI
def _cli(*args):
    return subprocess.run([sys.executable, str(ROOT / "data/build.py"), *map(str, args)], capture_output=True,
                          text=True, timeout=300, cwd=ROOT)


def test_cli_imports_and_exits_2_listing_bad_records(src, tmp_path):
    out = tmp_path / "out"
    ok = _cli("import", src, out, "--bucket", "64,32,16")
    assert ok.returncode == 0, ok.stderr
    assert "imported 2 trajectories (0 skipped), 4 images" in ok.stdout
    assert validate(out) == []
    path = _write(src, [_good_records()[0], _bad("plan_tag", src)[0]])
    bad = _cli("import", src, tmp_path / "out2", "--bucket", "64,32,16")
    assert bad.returncode == 2
    assert bad.stdout.splitlines() == [f"{path}:2: steps[0].plan: a plan must be "
                                       "<ins>...</ins><des>...</des>, got '<ins>draw a sofa</ins> a sofa'"]
    assert f"nothing written to {tmp_path / 'out2'}" in bad.stderr
    assert not (tmp_path / "out2").exists() and _leftovers(tmp_path / "out2") == []
