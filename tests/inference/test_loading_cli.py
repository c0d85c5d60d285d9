"""load_generator on checkpoints and exports, clear errors, train/sample.py, strips and JSON."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
from PIL import Image

from procpaint.inference import CheckpointError, GenerationConfig, load_generator, render_strip

ROOT = Path(__file__).resolve().parents[2]
FAST = GenerationConfig(num_steps=3, max_text_tokens=6)


def _sample_main():
    spec = importlib.util.spec_from_file_location("sample_cli", ROOT / "train" / "sample.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


@pytest.fixture(scope="module")
def saved(tmp_path_factory, model, tok):
    """An export directory and a Lightning-style .ckpt of the test model, as train/fit.py writes them."""
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("ckpt")
    export = root / "export"
    export.mkdir()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(export / "model.safetensors"))
    (export / "model_config.json").write_text(json.dumps(asdict(model.cfg)))
    tok.save(export / "tokenizer.json")
    (export / "config.yaml").write_text("data:\n  image_size: 16\n")
    ckpt = root / "last.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in state.items()},
                "hyper_parameters": {"config": {"data": {"image_size": 16}},
                                     "model_config": asdict(model.cfg)},
                "tokenizer_json": tok.tok.to_str()}, ckpt)
    return {"export": export, "ckpt": ckpt, "root": root}


@pytest.mark.parametrize("kind", ["export", "ckpt"])
def test_loads_and_generates_like_the_model(saved, gen, kind):
    g = load_generator(saved[kind])
    assert g.image_size == 16
    cfg = replace(FAST, mode="single-pass")
    a, b = g.generate(["a photo of a circle"], cfg)[0], gen.generate(["a photo of a circle"], cfg)[0]
    torch.testing.assert_close(a.final_image, b.final_image)


def test_checkpoint_errors(saved, tmp_path, model, tok):
    with pytest.raises(CheckpointError, match="not found"):
        load_generator(tmp_path / "missing.ckpt")
    with pytest.raises(CheckpointError, match=r"lacks \['model.safetensors'"):
        load_generator(tmp_path)
    bad = tmp_path / "bad.ckpt"
    bad.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable"):
        load_generator(bad)
    ck = torch.load(saved["ckpt"], weights_only=False)
    ck["hyper_parameters"]["model_config"]["hidden_size"] = 128
    torch.save(ck, tmp_path / "wrong.ckpt")
    with pytest.raises(CheckpointError, match="do not fit"):
        load_generator(tmp_path / "wrong.ckpt")
    ck["hyper_parameters"]["model_config"].update(hidden_size=64, vocab_size=7)
    torch.save(ck, tmp_path / "vocab.ckpt")
    with pytest.raises(CheckpointError, match="tokenizer has"):
        load_generator(tmp_path / "vocab.ckpt")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            load_generator(saved["export"], device="cuda")


def test_json_and_strip(gen, script, rounds):
    r = gen.generate(["a photo of a red circle"], replace(FAST, max_text_tokens=24),
                     logits_processor=script([rounds["two"]]))[0]
    data = json.loads(r.to_json({1: "0_0.png"}))
    assert data["end_reason"] == "eos" and data["images"] == 2 and data["stages"][1]["image"] == "0_0.png"
    assert [s["kind"] for s in data["stages"]] == [s.kind for s in r.stages]
    strip = render_strip(r, cell=64)
    assert strip.mode == "RGB" and strip.width >= 2 * 64


def test_sample_cli_writes_outputs(saved, tmp_path, capsys):
    main = _sample_main()
    pf = tmp_path / "prompts.txt"
    pf.write_text("# two prompts\na photo of a red circle\n\na photo of two blue squares\n")
    out = tmp_path / "out"
    rc = main(["--ckpt", str(saved["export"]), "--prompts-file", str(pf), "--prompt", "a photo of a circle",
               "--mode", "single-pass", "--steps", "3", "--out", str(out), "--batch-size", "2"])
    assert rc == 0
    for i in range(3):
        assert (out / f"{i}.png").is_file() and (out / f"{i}_final.png").is_file()
        data = json.loads((out / f"{i}.json").read_text())
        assert data["mode"] == "single-pass" and data["stages"][0]["image"] == f"{i}_0.png"
    assert Image.open(out / "0_final.png").size == (16, 16)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("[")]
    assert len(lines) == 3 and "eos" in lines[0]


@pytest.mark.parametrize("argv, message", [
    (["--prompt", "a photo of a zebra"], "unknown word(s) ['zebra']"),
    (["--prompt", "a circle", "--device", "cuda:7"], "cuda"),
    (["--prompt", "a circle", "--steps", "1"], "num_steps"),
    ([], "no prompts"),
])
def test_sample_cli_errors(saved, tmp_path, capsys, argv, message):
    if message == "cuda" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    rc = _sample_main()(["--ckpt", str(saved["export"]), "--out", str(tmp_path / "o"), *argv])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_sample_cli_missing_checkpoint(tmp_path, capsys):
    rc = _sample_main()(["--ckpt", str(tmp_path / "nope.ckpt"), "--prompt", "a circle"])
    assert rc == 2 and "checkpoint not found" in capsys.readouterr().err
