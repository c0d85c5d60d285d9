"""Every consumer of trajectories on a scripted multi-round trajectory (draft, critique, refine,
refined image): train/sample.py, train/evaluate.py's generation path and the training callback.

The models of the other tests never refine, which hid a crash in sample.py's output writer
(``result.stages.index`` compared stages, i.e. their image tensors)."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


def _cli(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_cli_multiround", ROOT / "train" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


KINDS = ["plan", "draft", "critique", "refine", "refined", "plan", "draft", "critique", "plan", "draft",
         "critique"]                      # three drafts: stages equal in kind and text, unequal images


class ScriptedGenerator:
    """The real generator, forced along one multi-round script for every prompt."""

    def __init__(self, gen, script, ids):
        self.gen, self.script, self.ids = gen, script, ids
        self.image_size = gen.image_size

    def encode_prompt(self, prompt):
        return self.gen.encode_prompt(prompt)

    def generate(self, prompts, config):
        return self.gen.generate(prompts, replace(config, max_text_tokens=24),
                                 logits_processor=self.script([self.ids]))


@pytest.fixture
def scripted_gen(gen, script, rounds):
    from procpaint.inference import GenerationConfig

    g = ScriptedGenerator(gen, script, rounds["four"])
    r = g.generate(["a photo of a red circle"], GenerationConfig(num_steps=3))[0]
    assert [s.kind for s in r.stages] == KINDS
    return g


def test_sample_cli_writes_every_image_of_a_refined_trajectory(scripted_gen, tmp_path, monkeypatch, capsys):
    import procpaint.inference

    monkeypatch.setattr(procpaint.inference, "load_generator", lambda *a, **k: scripted_gen)
    out = tmp_path / "out"
    rc = _cli("sample").main(["--ckpt", str(tmp_path), "--prompt", "a photo of a red circle",
                              "--prompt", "a photo of a blue square", "--steps", "3", "--out", str(out)])
    assert rc == 0
    for i in range(2):
        data = json.loads((out / f"{i}.json").read_text())
        assert [s["kind"] for s in data["stages"]] == KINDS
        assert [s["image"] for s in data["stages"]] == [
            None, f"{i}_0.png", None, None, f"{i}_1.png", None, f"{i}_2.png", None, None, f"{i}_3.png", None]
        for name in (f"{i}_0.png", f"{i}_1.png", f"{i}_3.png", f"{i}_final.png", f"{i}.png"):
            Image.open(out / name).verify()
    assert "stages=PDCRFPDCPDC" in capsys.readouterr().out


def test_evaluate_cli_generates_and_scores_refined_trajectories(scripted_gen, tmp_path, monkeypatch):
    cli = _cli("evaluate")
    monkeypatch.setattr(cli, "load_generator", lambda *a, **k: scripted_gen)
    ckpt = tmp_path / "m.ckpt"
    ckpt.write_bytes(b"")
    out = tmp_path / "eval"
    rc = cli.main(["--ckpt", f"m={ckpt}", "--benchmark", "geneval", "--limit", "2", "--images-per-prompt", "1",
                   "--num-steps", "3", "--out", str(out), "--quiet"])
    assert rc == 0
    folder = out / "m" / "process" / "geneval"
    row = json.loads((folder / "00000" / "trajectories.jsonl").read_text().splitlines()[0])
    assert row["images"] == 4 and [s["kind"] for s in row["stages"]] == KINDS
    assert (folder / "00001" / "samples" / "0000.png").is_file() and (folder / "results.jsonl").is_file()


def test_trajectory_logger_logs_refined_trajectories(scripted_gen, monkeypatch):
    from procpaint.inference import GenerationConfig
    from procpaint.training import callbacks

    monkeypatch.setattr(callbacks, "generate_with",
                        lambda module, tok, prompts, cfg, size: scripted_gen.generate(prompts, cfg))
    logged = []
    writer = SimpleNamespace(add_image=lambda tag, img, step, dataformats: logged.append((tag, img.shape)),
                             add_text=lambda tag, text, step: logged.append((tag, text)),
                             add_scalar=lambda tag, value, step: logged.append((tag, value)))
    cb = callbacks.TrajectoryLogger(["a photo of a red circle"], scripted_gen.gen.tok, image_size=16,
                                    every_n_steps=1, config=GenerationConfig(num_steps=3))
    trainer = SimpleNamespace(global_step=1, is_global_zero=True, logger=SimpleNamespace(experiment=writer))
    cb.on_train_batch_end(trainer, SimpleNamespace(model=scripted_gen.gen.model))
    texts = [v for t, v in logged if t == "trajectory/0" and isinstance(v, str)]
    assert texts and "- refine: <refine>" in texts[0]
    assert any(t == "trajectory/detector_accuracy" for t, _ in logged)


def test_sample_cli_out_naming_a_file_is_exit_2(tmp_path, capsys):
    out = tmp_path / "taken.png"
    out.write_bytes(b"mine")
    rc = _cli("sample").main(["--ckpt", str(tmp_path / "missing"), "--prompt", "a circle", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "exists and is not a directory" in err and "Traceback" not in err
    assert out.read_bytes() == b"mine"
