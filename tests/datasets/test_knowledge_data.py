"""The fact corpus and knowledge prompts in built data: text-only fact records (CE only) state every
fact; training image prompts name trained facts only, never a held-out one (a built dataset is
scanned); fact records pack with CE on their text and no image tokens."""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest

from procpaint.datasets import BuildConfig, TrajectoryDataset, build_dataset
from procpaint.datasets.construct import knowledge_prompt
from procpaint.datasets.records import FACTS_PER_RECORD, fact_statements, multiturn_kind
from procpaint.datasets.store import dataset_vocabulary
from procpaint.datasets.transforms import sample_transform
from procpaint.datasets.validate import check_record, validate
from procpaint.sequence.packing import Packer
from procpaint.sequence.tokenizer import TextTokenizer
from procpaint.world import facts as F
from procpaint.world.language import NUMBERS
from procpaint.world.prompts import TAGS, is_heldout

CFG = BuildConfig(multiturn=40, conflict=6, alignment=6, fact_share=0.2, knowledge_share=0.6, image_size=32,
                  verify_images=0.0, shard_size=20)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("knowledge-data")
    build_dataset(out, "all", CFG, progress=False)
    recs = [json.loads(line) for p in sorted(out.glob("*/shard-*.jsonl"))
            for line in p.read_text().splitlines()]
    return out, recs


def test_default_build_has_facts_and_knowledge_prompts_in_exact_shares():
    kinds = Counter(multiturn_kind(BuildConfig(), i) for i in range(600))
    assert kinds == {"fact": 60, "knowledge": 60, "trajectory": 480}
    single = replace(BuildConfig(), tag_weights={t: float(t == "single_object") for t in TAGS})
    assert {multiturn_kind(single, i) for i in range(100)} == {"trajectory"}     # probes stay single-object
    with pytest.raises(ValueError, match="fact_share"):
        BuildConfig(fact_share=0.6, knowledge_share=0.6)


def test_no_heldout_fact_is_asked_in_any_training_image_prompt(built):
    out, recs = built
    held = F.split_facts(CFG.knowledge_heldout, CFG.knowledge_split_seed)["heldout"]
    trained = {f.id for f in F.split_facts(CFG.knowledge_heldout, CFG.knowledge_split_seed)["trained"]}
    prompts = [s["text"] for r in recs if r["kind"] != "fact" for s in r["segments"]
               if s["type"] == "text" and s["role"] == "prompt"] + [r["prompt"] for r in recs if r["prompt"]]
    knowledge = [r for r in recs if r["tag"] == "knowledge"]
    assert len(knowledge) == 24 and len(prompts) == 2 * (32 + 6) + 6
    for p in prompts:
        hits = [f.id for f in held if F.asked_pattern(f).search(p)]
        assert not hits, (p, hits)
    by_id = {f.id: f for f in F.FACTS}
    for r in knowledge:                          # a trained fact, asked in the prompt, resolved by the plans
        fact = by_id[r["knowledge"]["fact"]]
        assert fact.id in trained and F.asked_pattern(fact).search(r["prompt"]), r["prompt"]
        plans = " ".join(s["text"] for s in r["segments"] if s["type"] == "text" and s["role"] == "plan")
        if fact.form in ("color", "shape"):
            assert fact.answer in re.findall(r"[a-z]+", plans), (r["prompt"], plans)
        if fact.form == "count":                 # the first plan draws them all and says the number
            first = next(s["text"] for s in r["segments"] if s["type"] == "text" and s["role"] == "plan")
            assert NUMBERS[fact.answer] in re.findall(r"[a-z]+", first.split("</ins>")[0]), first
    assert len({r["knowledge"]["fact"] for r in knowledge}) > 10


def test_knowledge_scenes_are_never_heldout_geneval_prompts():
    cfg = BuildConfig(heldout_fraction=0.3)
    rng = np.random.default_rng(0)
    for _ in range(300):
        fact, text, spec = knowledge_prompt(cfg, rng)
        assert not is_heldout(spec, cfg.heldout_fraction) and F.asked_pattern(fact).search(text)


def test_fact_records_are_text_only_ce_targets_and_valid(built):
    out, recs = built
    facts = [r for r in recs if r["kind"] == "fact"]
    assert len(facts) == 8
    for r in facts:
        assert r["eos"] is False and len(r["facts"]) == FACTS_PER_RECORD
        assert [(s["type"], s["role"], s["loss"]) for s in r["segments"]] == [("text", "fact", True)]
    assert validate(out) == []
    bad = {**facts[0], "segments": [*facts[0]["segments"], {"type": "text", "role": "prompt", "text": "a",
                                                             "loss": False}]}
    assert any("only text segments of role 'fact'" in m for _, m in check_record(bad, out, None))
    tags = json.loads((out / "manifest.json").read_text())["subsets"]["multiturn"]["tags"]
    assert tags["fact"] == 8 and tags["knowledge"] == 24


def test_fact_records_state_the_whole_corpus():
    corpus = F.fact_corpus()
    n = -(-len(corpus) // FACTS_PER_RECORD)
    fact_indexes = [i for i in range(10_000) if multiturn_kind(BuildConfig(), i) == "fact"][:n]
    said = [s for i in fact_indexes for _, s in fact_statements(BuildConfig(), i)]
    assert set(said) == {s for _, s in corpus}                   # both splits, every phrasing
    assert fact_statements(BuildConfig(), fact_indexes[3]) == fact_statements(BuildConfig(), fact_indexes[3])


def test_fact_sample_packs_with_ce_on_its_text_and_no_image_tokens(built):
    out, _ = built
    tok = TextTokenizer(out / "tokenizer.json")
    assert set(F.vocabulary()) <= set(dataset_vocabulary())
    ds = TrajectoryDataset(out, subsets="multiturn", shuffle=False, tokenizer=tok, on_error="error")
    sample = next(s for s in ds if s.kind == "fact")
    for transform in (sample_transform("final_only"), sample_transform("process", self_critique=False)):
        assert transform(sample) == sample                       # single-pass rows read the facts too
    ids = tok.encode(sample.segments[0].text)
    packer = Packer(tok, pixels_per_token=8, max_tokens=len(ids) + 10, overflow_buffer=0, p_drop_text=1.0)
    (batch,) = [*packer.add(sample), *packer.flush()]
    assert batch.latent_indexes.numel() == 0 and batch.images.shape[0] == 0
    assert batch.text_ids[: len(ids)].tolist() == ids and tok.vision_start_id not in batch.text_ids.tolist()
    assert batch.ce_labels.tolist() == ids[1:]                   # every token but the first, no EOS
    assert batch.ce_indexes.tolist() == list(range(len(ids) - 1))
    assert set(batch.attn_modes[:1]) == {"causal"}


def test_cli_sets_the_shares_and_reports_them(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    run = [sys.executable, str(root / "data/build.py"), "multiturn", "--preset", "tiny", "--samples", "20",
           "--verify-images", "0", "--quiet"]
    on = subprocess.run([*run, "--out", str(tmp_path / "on")], capture_output=True, text=True)
    assert on.returncode == 0 and "2 fact-corpus records, 2 knowledge prompts" in on.stdout, on.stderr
    off = subprocess.run([*run, "--out", str(tmp_path / "off"), "--fact-share", "0",
                          "--knowledge-share", "0"], capture_output=True, text=True)
    assert off.returncode == 0 and "fact" not in off.stdout, off.stderr
    bad = subprocess.run([*run, "--out", str(tmp_path / "bad"), "--fact-share", "0.8",
                          "--knowledge-share", "0.8"], capture_output=True, text=True)
    assert bad.returncode == 2 and "fact_share + knowledge_share" in bad.stderr
