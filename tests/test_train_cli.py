"""`gdig finetune` and `gdig eval` as a user drives them: the loss as it trains (and a dev
loss), the model's chat template for decoding, format failures counted apart from quality,
and every user mistake (missing file, folder, typo'd flag) as one line and exit 2."""

from __future__ import annotations

import json

import pytest
from helpers_models import save_tiny, toy_pairs
from safetensors.torch import load_file

from gdig.cli import main
from gdig.data.pairs import Pair
from gdig.train import score_hypotheses
from gdig.train.decode import Hypothesis
from gdig.train.failures import format_failure
from gdig.train.metrics import summarize

CHAT = (
    "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """(tiny model folder with a chat template, training file, dev file, test file)."""
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("cli")
    model = save_tiny("llama", root / "tiny")
    tok = AutoTokenizer.from_pretrained(model)
    tok.chat_template = CHAT
    tok.save_pretrained(model)
    paths = []
    for name, pairs in (("train", toy_pairs(12)), ("dev", toy_pairs(5, seed=1))):
        path = root / f"{name}.jsonl"
        path.write_text("".join(json.dumps(p.to_record()) + "\n" for p in pairs))
        paths.append(path)
    return model, paths[0], paths[1], paths[1]


def _run(argv, capsys):
    """(exit status, stdout, stderr) of ``gdig ARGV`` (argparse's exits included)."""
    capsys.readouterr()
    try:
        rc = main([*argv, "--no-progress"])
    except SystemExit as exc:
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


def test_finetune_prints_its_loss_and_dev_loss(files, tmp_path, capsys):
    model, train, dev, _ = files
    argv = ["finetune", "--model", str(model), "--data", str(train), "--max-steps", "4",
            "--train-batch-size", "4", "--log-every", "2", "--precision", "fp32",
            "--learning-rate", "1e-2"]  # fmt: skip
    rc, out, _ = _run([*argv, "--out", str(tmp_path / "ft"), "--dev", str(dev)], capsys)
    assert rc == 0, out
    lines = out.splitlines()
    assert lines[0] == "finetune: precision fp32 (fp32: as asked)"
    meta = json.loads((tmp_path / "ft" / "gdig_finetune.json").read_text())
    losses = meta["losses"]
    for step, since in ((2, losses[:2]), (4, losses[2:])):
        line = next(x for x in lines if f"step {step}/4  epoch" in x)
        assert f"loss {sum(since) / 2:.4f}" in line
    # dev loss before training, at the end of the epoch (3 steps of 4 pairs) and at the end
    assert [s for s, _ in meta["dev_losses"]] == [0, 3, 4] and meta["n_dev_pairs"] == 5
    for step, loss in meta["dev_losses"]:
        assert f"step {step}/4  dev loss {loss:.4f} (5 pairs)" in out
    assert meta["dev_losses"][-1][1] < meta["dev_losses"][0][1]
    # the dev passes change nothing: the same run without --dev has the same weights
    rc, out, _ = _run([*argv, "--out", str(tmp_path / "plain")], capsys)
    assert rc == 0 and "dev loss" not in out
    a = load_file(tmp_path / "ft" / "model.safetensors")
    b = load_file(tmp_path / "plain" / "model.safetensors")
    assert all((a[k] == b[k]).all() for k in a)


def test_eval_with_the_chat_template_reports_format_failures(files, tmp_path, capsys):
    model, _, _, test = files
    hyp = tmp_path / "h.jsonl"
    argv = ["eval", "--model", str(model), "--test", str(test), "--out", str(hyp),
            "--max-new-tokens", "4", "--precision", "fp32", "--template", "chat"]  # fmt: skip
    rc, out, err = _run(argv, capsys)
    assert rc == 0, err
    scores = json.loads(hyp.with_suffix(".json").read_text())
    assert scores["template"] == "chat" and scores["precision"]["name"] == "fp32"
    rows = [json.loads(line) for line in hyp.read_text().splitlines()]
    kinds = scores["format_failures"]
    assert sum(kinds.values()) == scores["n_format_failures"]
    assert sum(r["format_failure"] is not None for r in rows) == scores["n_format_failures"]
    assert scores["n_format_failures"] + scores["well_formed"]["n"] == len(rows) == 5
    assert "precision fp32 (fp32: as asked)" in out
    assert f"format failures {scores['n_format_failures']} of 5" in out
    assert "s per sentence decoded" in out


def test_format_failures_by_kind():
    src, ref = "das haus ist rot", "the house is red"
    instruction = 'Translate the following text into English\n\nText:\n""\n\n'

    def kind(text, runaway=False, src=src, ref=ref):
        return format_failure(text, runaway=runaway, src=src, ref=ref, instruction=instruction)

    assert kind("the house is red") is None
    assert kind("") == kind("  ") == "empty"
    assert kind("the house is red and the", runaway=True) == "runaway"
    assert kind("English:") == kind("English translation:") == kind("英文：") == "label"
    assert kind("The house is red: yes") is None  # a colon in a sentence is no label
    assert kind("Translate the following text into English") == "echo"
    assert kind('"Text"') == kind("english") == "echo"
    assert kind("a text") is None and kind("Tran") is None  # whole words only
    assert kind("Das Haus ist rot") == kind('"das haus ist rot"') == "copy"
    assert kind("Berlin", src="Berlin", ref="Berlin") is None  # the right answer is a copy
    # another script than the reference's: the source edited, or another language
    zh = "他的英文作文沒有甚麼錯處。"
    assert kind("他的英文作文沒有現象。", src=zh, ref="His essay has no mistakes.") == "script"
    assert kind("Его сочинение", ref="His essay") == "script"
    assert kind("His essay (作文) has no mistakes", ref="His essay has no mistakes.") is None
    assert kind("彼の作文にはまちがいがない。", src="x", ref="他的作文沒有錯。") is None  # CJK both
    assert kind("2024", ref="2024") is None  # no letters: no script to compare


def test_well_formed_scores_are_those_of_the_other_outputs():
    pairs = [Pair(f"p{i}", f"s{i}", t, "de", "en") for i, t in enumerate(
        ["the house is red", "a dog barks", "the tree is tall", "I read a book"])]  # fmt: skip
    texts = ["the house is red", "English:", "the tree is big", ""]
    hyps = [Hypothesis(p.id, t, 3, not t, False, "eos") for p, t in zip(pairs, texts, strict=True)]
    failures = [None, "label", None, "empty"]
    res = summarize(pairs, hyps, failures)
    assert res["format_failures"] == {
        "empty": 1, "runaway": 0, "label": 1, "echo": 0, "copy": 0, "script": 0,
    }  # fmt: skip
    assert res["n_format_failures"] == 2
    alone = score_hypotheses([pairs[0].tgt, pairs[2].tgt], [texts[0], texts[2]], tgt_lang="en")
    assert res["well_formed"] == {"n": 2, "bleu": alone["bleu"], "chrf": alone["chrf"]}
    assert res["chrf"] < alone["chrf"]
    assert [r["format_failure"] for r in res["rows"]] == failures


@pytest.mark.parametrize("verb", ["finetune", "eval"])
@pytest.mark.parametrize("mistake", ["missing", "folder", "typo", "model", "out"])
def test_user_mistakes_are_one_line_and_exit_2(verb, mistake, files, tmp_path, capsys):
    model, train, _, test = files
    data_flag, data = ("--data", train) if verb == "finetune" else ("--test", test)
    out = tmp_path / ("ft" if verb == "finetune" else "h.jsonl")
    argv = {"--model": str(model), data_flag: str(data), "--out": str(out)}
    extra = []
    if mistake == "missing":
        argv[data_flag] = str(tmp_path / "nope.jsonl")
    elif mistake == "folder":
        argv[data_flag] = str(tmp_path)
    elif mistake == "typo":
        extra = ["--max-new-token" if verb == "eval" else "--max-step", "3"]
    elif mistake == "model":
        argv["--model"] = str(tmp_path / "no-model")
    else:  # finetune: a file where the model folder goes; eval: a folder for the file
        if verb == "finetune":
            out.write_text("x")
        else:
            argv["--out"] = str(tmp_path)
    rc, stdout, err = _run([verb, *[x for kv in argv.items() for x in kv], *extra], capsys)
    assert rc == 2 and not stdout
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith(f"gdig {verb}: error: ")
    named = {"missing": data_flag, "folder": data_flag, "typo": "did you mean --max-",
             "model": "--model", "out": "--out"}[mistake]  # fmt: skip
    assert named in err
