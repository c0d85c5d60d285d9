"""train/export_bagel.py: a procpaint export (as train/fit.py writes it, from a run started with
model.init_from) becomes a BAGEL-format directory that loads back into the same weights and carries
the template's understanding-path tensors."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from procpaint.model import build_model, model_config
from procpaint.model.bagel_io import export_bagel, load_bagel
from procpaint.sequence.tokenizer import TextTokenizer, build_word_level

ROOT = Path(__file__).resolve().parents[2]


def _main():
    spec = importlib.util.spec_from_file_location("export_bagel_cli", ROOT / "train" / "export_bagel.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


def test_export_script_round_trip(tmp_path, capsys):
    tok = TextTokenizer(build_word_level("a photo of red circle square".split()))
    base = build_model(model_config("debug", vocab_size=tok.vocab_size + 5))
    template = export_bagel(base, tmp_path / "bagel")
    sd = load_file(str(template / "ema.safetensors"))
    sd["connector.fc1.weight"] = torch.randn(64, 8)                 # an understanding path to carry
    save_file(sd, str(template / "ema.safetensors"))

    cfg = model_config("debug", vocab_size=tok.vocab_size, init_from=str(template))
    tuned = build_model(cfg)                                         # the run: BAGEL weights in ...
    with torch.no_grad():
        tuned.layers[0].gen.o.weight.add_(1.0)                       # ... then fine-tuned
    export = tmp_path / "export"
    export.mkdir()
    save_file({k: v.contiguous() for k, v in tuned.state_dict().items()}, str(export / "model.safetensors"))
    (export / "model_config.json").write_text(json.dumps(asdict(cfg)))
    tok.save(export / "tokenizer.json")

    assert _main()(["--ckpt", str(export), "--out", str(tmp_path / "out")]) == 0
    assert "template: " + str(template) in capsys.readouterr().out
    back = load_file(str(tmp_path / "out" / "ema.safetensors"))
    assert torch.equal(back["connector.fc1.weight"], sd["connector.fc1.weight"])
    again = build_model(model_config("debug", vocab_size=tok.vocab_size))
    load_bagel(again, tmp_path / "out")
    a, b = tuned.state_dict(), again.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _main()(["--ckpt", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 1
