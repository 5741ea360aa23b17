"""`ihlab-probe` end to end: bad inputs fail before the model is loaded (naming the key, writing
nothing), the default SmolLM2 run completes offline, bfloat16 agrees with float32."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

from ihlab.clamps.spec import ClampConfig
from ihlab.errors import ConfigError
from ihlab.probe.config import ModelSource, ProbeConfig, SelectConfig, TaskConfig
from ihlab.probe.models import fast_dtype

IHLAB_PROBE = str(Path(sys.executable).parent / "ihlab-probe")
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def probe_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **OFFLINE, "IHLAB_OUTPUTS": str(tmp_path / "outputs")}
    return subprocess.run(
        [IHLAB_PROBE, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )


@pytest.fixture
def config_only_model(tmp_path: Path) -> str:
    """A model folder with a config.json and no weights: 4 layers x 6 heads. Any probe that gets
    past its checks fails loading the weights, so a check that fires proves it ran first."""
    folder = tmp_path / "config_only"
    config = transformers.LlamaConfig(hidden_size=48, num_hidden_layers=4, num_attention_heads=6)
    config.save_pretrained(folder)
    return str(folder)


class Payload:
    """Unpickling this runs code: it creates the file `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def crafted_checkpoint(tmp_path: Path) -> str:
    path = tmp_path / "crafted.ckpt"
    torch.save({"state_dict": {}, "payload": Payload(tmp_path / "pwned")}, path)
    return str(path)


def file_with(tmp_path: Path, name: str, content: bytes) -> str:
    (tmp_path / name).write_bytes(content)
    return str(tmp_path / name)


def nlp_file(tmp_path: Path, content: str) -> str:
    path = tmp_path / "rows.jsonl"
    path.write_text(content)
    return str(path)


BAD_INPUTS = {
    "head beyond the model": (
        lambda m, t: ProbeConfig(model=ModelSource(m), select=SelectConfig(heads=["L99H0"])),
        r"select\.heads: head L99H0 does not exist: the model has 4 layers x 6 heads\. Fix",
    ),
    "intervention head beyond the model": (
        lambda m, t: ProbeConfig(
            model=ModelSource(m),
            interventions={"x": ClampConfig(site="blocks.2.attn.z", heads=[6])},
        ),
        r"interventions\.x: head L2H6 does not exist",
    ),
    "malformed NLP row": (
        lambda m, t: ProbeConfig(
            model=ModelSource(m),
            tasks=TaskConfig(names=["nlp"], nlp_path=nlp_file(t, '{"text": "a", "label": 1}\n{')),
        ),
        r"tasks\.nlp_path=.*rows\.jsonl: line 2 is not JSON",
    ),
    "NLP labels too thin": (
        lambda m, t: ProbeConfig(
            model=ModelSource(m),
            tasks=TaskConfig(
                names=["nlp"], nlp_path=nlp_file(t, '{"text": "a", "label": 1}\n' * 3)
            ),
        ),
        r"tasks\.nlp_path=.*: 1 distinct labels",
    ),
    "missing source": (
        lambda m, t: ProbeConfig(model=ModelSource("/nonexistent")),
        r"model\.source=/nonexistent: no such file or folder, and not a hub id\. Fix",
    ),
    "missing GGUF file": (
        lambda m, t: ProbeConfig(model=ModelSource(str(t / "model.gguf"))),
        r"model\.source=.*model\.gguf: no such GGUF file",
    ),
    "missing checkpoint": (
        lambda m, t: ProbeConfig(model=ModelSource(str(t / "run" / "last.ckpt"))),
        r"model\.source: checkpoint .*last\.ckpt does not exist",
    ),
    "truncated checkpoint": (
        lambda m, t: ProbeConfig(model=ModelSource(file_with(t, "cut.ckpt", b"PK\x03\x04"))),
        r"model\.source: checkpoint .*cut\.ckpt is corrupt or truncated",
    ),
    "crafted pickle": (
        lambda m, t: ProbeConfig(model=ModelSource(crafted_checkpoint(t))),
        r"model\.source: checkpoint .*crafted\.ckpt ",  # refused by ihlab.checkpoints
    ),
    "hub id not available offline": (
        lambda m, t: ProbeConfig(model=ModelSource("nobody-here/no-such-model")),
        r"model\.source=nobody-here/no-such-model: cannot read its config",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_probe_inputs_fail_before_the_model_loads_and_write_nothing(
    case: str, config_only_model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    from ihlab.probe.run import run_probe

    for key, value in OFFLINE.items():
        monkeypatch.setenv(key, value)
    # read once at import: without this a hub lookup waits for the network to time out
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    make, message = BAD_INPUTS[case]
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("an earlier file")
    with pytest.raises(ConfigError, match=message):
        run_probe(make(config_only_model, tmp_path), out)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]  # nothing written, nothing lost
    assert (out / "notes.txt").read_text() == "an earlier file"
    assert not (tmp_path / "pwned").exists()  # no code ran from a file


def test_the_cli_reports_a_bad_source_in_one_line(tmp_path: Path, ihlab_probe_main) -> None:
    result = ihlab_probe_main(["model.source=/nonexistent"], tmp_path)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ihlab-probe: config error: model.source=/nonexistent: no such file")
    assert "Traceback" not in result.stderr
    written = {p.name for p in (tmp_path / "outputs").rglob("*") if p.is_file()}
    assert not written & {"heads.csv", "results.csv", "summary.json"}


@pytest.mark.slow
def test_the_default_smollm2_run_completes_offline(tmp_path: Path) -> None:
    """The default run on fewer prompts (32 per row; the README's table has 512) and 2 text
    windows (the default 32): every output, and the README's central contrast, induction heads
    ablated below the full model and below the random control on both rows (measured here:
    repetition 59.4 < 70.8 < 71.9, WordSeq1 65.6 < 85.4 < 90.6; README: 53.5 < 57.4 < 58.8 and
    68.0 < 80.7 < 87.7). On the repetition row the random control sits less than two prompts below
    the full model at 32, 48, 64 and 96 prompts alike, as in the README (prompts are drawn in
    sequence from one seed, so the first 32 of a larger run are these 32)."""
    result = probe_cli(tmp_path, "tasks.n_prompts=32", "progress=false", "text.windows=2")
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = (tmp_path / "outputs" / "probe").iterdir()
    with (run / "heads.csv").open() as f:
        heads = list(csv.DictReader(f))
    assert len(heads) == 30 * 9  # every (layer, query head) of SmolLM2-135M
    assert {h["kv_head"] for h in heads} == {"0", "1", "2"}  # 9 query heads share 3 KV heads
    assert max(float(h["prefix_matching"]) for h in heads) > 0.8  # it has induction heads
    with (run / "results.csv").open() as f:
        results = list(csv.DictReader(f))
    columns = ["full", "1% IH ablated", "1% IH knockout", "1% random"]
    expected = [(task, "10", c) for task in ("repetition", "wordseq1") for c in columns]
    assert [(r["task"], r["shots"], r["condition"]) for r in results] == expected
    for r in results:
        assert r["n"] == "32"
        assert float(r["ci_low"]) <= float(r["accuracy"]) <= float(r["ci_high"])
        assert (r["p_vs_full"] == "") == (r["condition"] == "full")
        assert (r["p_vs_random"] != "") == ("IH" in r["condition"])
        assert (r["p_vs_ablated"] != "") == r["condition"].endswith("knockout")
        assert len(r["seed_accuracies"].split()) == (3 if "random" in r["condition"] else 0)
    for task in ("repetition", "wordseq1"):
        acc = {r["condition"]: float(r["accuracy"]) for r in results if r["task"] == task}
        assert acc["1% IH ablated"] < acc["1% random"] < acc["full"], (task, acc)
    with (run / "predictions.csv").open() as f:
        predictions = list(csv.DictReader(f))
    assert len(predictions) == 2 * 32 * (1 + 2 + 3)  # tasks x prompts x conditions
    summary = json.loads((run / "summary.json").read_text())
    assert summary["n_layers"] == 30 and summary["n_kv_heads"] == 3
    assert summary["dtype"] == str(fast_dtype("cpu")).removeprefix("torch.")
    assert summary["heads"]["1% IH ablated"] == ["L18H6", "L17H3", "L17H4"]  # the README's
    for name in ("heads.png", "results.png", "results.md"):
        assert (run / name).stat().st_size > 0
    with (run / "text_icl.csv").open() as f:  # the ICL score on text, 2 windows here
        text = {r["column"]: r for r in csv.DictReader(f)}
    assert list(text) == columns and {r["n"] for r in text.values()} == {"2"}
    assert text["full"]["change"] == "" and text["1% IH ablated"]["p_vs_random"] != ""
    assert summary["text_icl"]["full"]["icl"] == pytest.approx(float(text["full"]["icl"]))
    assert "ICL score of SmolLM2" in (run / "results.md").read_text()


@pytest.mark.slow
@pytest.mark.skipif(
    fast_dtype("cpu") != torch.bfloat16,
    reason="this CPU emulates bfloat16 (no AVX512-BF16 or AMX), so the probe computes in float32",
)
def test_bfloat16_predictions_agree_with_float32() -> None:
    """The stated agreement: bfloat16 picks the float32 model's option on >= 95% of prompts
    (measured on 128 prompts per task: 97.7-98.4%; the prompts that flipped had float32 margins
    under 0.09 nats). It guards `model.dtype=auto`'s choice of bfloat16, so it runs where that
    choice is made: on a CPU without native bfloat16 `auto` is float32 (and the emulated bfloat16
    forward would take ~4x float32's, 85 s of this test's 113 there); the default run's test
    then covers float32 only."""
    import copy

    from ihlab.probe.conditions import Condition
    from ihlab.probe.evaluate import score_conditions
    from ihlab.probe.models import load_model
    from ihlab.probe.prompts import make_prompts

    reference = load_model(dtype="float32")
    bf16 = copy.copy(reference)
    bf16.model = copy.deepcopy(reference.model).to(torch.bfloat16)
    prompts = make_prompts("repetition", 10, 48, 1) + make_prompts("wordseq1", 10, 48, 1)
    conditions = [Condition("full"), Condition("1% ablated", "ablate", [(18, 6), (17, 3), (17, 4)])]
    exact = score_conditions(reference, prompts, conditions)
    fast = score_conditions(bf16, prompts, conditions)
    for condition in conditions:
        same = exact[condition.name].argmax(1) == fast[condition.name].argmax(1)
        assert same.double().mean() >= 0.95, condition.name
