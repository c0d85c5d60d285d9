"""The sanity ladder's first rung at CI scale: a tiny model memorises two single-object pictures and
the exported model, loaded as users load it, regenerates them from their prompts. If this fails, a
change broke the training or inference path (codec statistics, masks, flow convention, sampler)."""

from __future__ import annotations

from procpaint.training import ladder


def test_overfit_rung_regenerates_its_samples(tmp_path):
    res = ladder.overfit(tmp_path, samples=2, steps=STEPS, image_size=32,
                         overrides=["model.preset=debug", "model.patch_size=4", "data.max_tokens=1024",
                                    "optim.lr=3e-3", "trainer.log_every_n_steps=50"])
    assert res.passed, res.line()
    assert res.metrics["regenerated"] == 1.0 and res.metrics["pixel_error"] < 0.05


STEPS = 600      # 400 left one of two pictures half-learnt once the vocabulary grew (issue 12): the
                # memorisation must not hang on one initialisation
