"""The pure logic of the docs harness (doc_blocks.py): blocks, markers, shell lines, argv, rewriting."""

from __future__ import annotations

import textwrap

import pytest

from doc_blocks import (PLACEHOLDER, TINY, Block, Command, DocCommandError, check_argv, check_torchrun, commands,
                        expand, extract_blocks, logical_lines, parse_argv, rewrite_line, rewrite_script,
                        split_segments, us3l_argv, words)


def md(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


# ------------------------------------------------------------------------------------ blocks and markers


def test_blocks_languages_lines_and_bodies():
    doc = md("""
        # Title

        ```bash
        us3l train
        ```
        text
        ~~~python
        print("x")
        ~~~
        ````
        ```nested```
        ````
        ```
        plain
        ```
    """)
    blocks = extract_blocks(doc)
    assert [(b.lang, b.line, b.text) for b in blocks] == [
        ("bash", 3, "us3l train"), ("python", 7, 'print("x")'), ("", 10, "```nested```"), ("", 13, "plain")]
    assert blocks[0].body_line == 4 and blocks[0].is_shell and not blocks[1].is_shell


def test_markers_are_read_from_the_previous_non_empty_line():
    doc = md("""
        <!-- doctest: run -->

        ```bash
        us3l widths
        ```
        <!-- doctest: run -->
        some prose in between
        ```sh
        us3l widths
        ```
        <!-- doctest: skip -->
        ```toml
        [tool]
        ```
        ```console
        $ us3l widths
        ```
    """)
    assert [b.marker for b in extract_blocks(doc)] == ["run", None, "skip", None]
    assert [b.run for b in extract_blocks(doc)] == [True, False, False, False]


def test_indented_fence_and_info_string():
    doc = "1. step\n\n   ```Bash title=x\n   us3l widths\n     --json\n   ```\n"
    (block,) = extract_blocks(doc)
    assert block.lang == "bash" and block.text == "us3l widths\n  --json"


def test_unclosed_fence_runs_to_the_end():
    (block,) = extract_blocks("```bash\nus3l widths\n")
    assert block.text == "us3l widths"


# ------------------------------------------------------------------------------------ shell lines


def test_continuations_are_joined_and_comments_skipped():
    text = "# a comment\nus3l bench ckpt.pt \\\n    --budget-ms 5 \\\n    --metric p95\n\nus3l widths  # trailing\n"
    assert logical_lines(text) == [(1, "us3l bench ckpt.pt     --budget-ms 5     --metric p95"),
                                   (5, "us3l widths  # trailing")]


def test_heredoc_bodies_are_not_commands():
    text = "cat > x.toml <<'EOF'\nus3l bench --bogus\nEOF\nus3l widths\npython - <<PY\nprint(1)\nPY\n"
    assert [line for _, line in logical_lines(text)] == ["cat > x.toml <<'EOF'", "us3l widths", "python - <<PY"]


def test_open_quotes_join_lines():
    text = 'python -c "\nimport sys\n" && us3l widths\n'
    assert logical_lines(text) == [(0, 'python -c "\nimport sys\n" && us3l widths')]


def test_console_blocks_keep_prompt_lines_only():
    text = "$ us3l widths \\\n> --json\n[{...}]\n$ us3l --version\nus3l-deploy 0.1.0\n"
    assert logical_lines(text, console=True) == [(0, "us3l widths --json"), (3, "us3l --version")]


@pytest.mark.parametrize("line,expected", [
    ("us3l train && us3l eval c.pt", ["us3l train", "us3l eval c.pt"]),
    ("a; b | c || d & e", ["a", "b", "c", "d", "e"]),
    ("us3l eval c.pt --json | python -c 'import sys; print(sys.stdin.read())'",
     ["us3l eval c.pt --json", "python -c 'import sys; print(sys.stdin.read())'"]),
    ('echo "a && b" && us3l widths', ['echo "a && b"', "us3l widths"]),
    ("us3l bench c.pt > log.txt 2>&1 && tail log.txt", ["us3l bench c.pt > log.txt 2>&1", "tail log.txt"]),
    ("us3l widths  # comment; with && operators", ["us3l widths"]),
    ("x=$(us3l widths --json | head -n 1); echo $x", ["x=$(us3l widths --json | head -n 1)", "echo $x"]),
    ("for w in 0.25 0.5; do us3l export c.pt --width $w; done", ["for w in 0.25 0.5", "do us3l export c.pt --width $w",
                                                               "done"]),
])
def test_split_segments(line, expected):
    assert split_segments(line) == expected


@pytest.mark.parametrize("segment,expected", [
    ("us3l bench $CKPT --out ${OUT}/b", f"us3l bench {PLACEHOLDER} --out {PLACEHOLDER}/b"),
    ("torchrun --nproc_per_node=2 $(which us3l) train", "torchrun --nproc_per_node=2 us3l train"),
    ("torchrun `command -v us3l` train", "torchrun us3l train"),
    ('us3l eval "$(ls runs/*.pt | head -n 1)"', f'us3l eval "{PLACEHOLDER}"'),
    ("us3l eval '$NOT_EXPANDED'", "us3l eval '$NOT_EXPANDED'"),
])
def test_expand(segment, expected):
    assert expand(segment) == expected


def test_words_drop_redirections_and_unbalanced_quotes_raise():
    assert words("us3l bench c.pt > log.txt 2>&1 --budget-ms 5 2>/dev/null") == ["us3l", "bench", "c.pt", "--budget-ms",
                                                                                 "5"]
    with pytest.raises(DocCommandError):
        words("us3l eval 'c.pt")


# ------------------------------------------------------------------------------------ recognising us3l


@pytest.mark.parametrize("line,args,launcher", [
    ("us3l bench c.pt", ["bench", "c.pt"], "us3l"),
    (".venv/bin/us3l widths --json", ["widths", "--json"], "us3l"),
    ("OMP_NUM_THREADS=1 time us3l widths", ["widths"], "us3l"),
    ("python -m us3l.cli.main train --epochs 2", ["train", "--epochs", "2"], "python"),
    (".venv/bin/python3 -u -m us3l.cli.main widths", ["widths"], "python"),
    ("torchrun --standalone --nproc_per_node=4 -m us3l.cli.main train --recipe r", ["train", "--recipe", "r"],
     "torchrun"),
    ("torchrun --nnodes=2 --nproc_per_node 8 $(which us3l) train", ["train"], "torchrun"),
    ("python -m torch.distributed.run --nproc_per_node=2 -m us3l.cli.main train", ["train"], "torchrun"),
])
def test_us3l_invocations(line, args, launcher):
    inv = us3l_argv(words(line))
    assert inv is not None and inv.args == args and inv.launcher == launcher


def test_torchrun_launcher_args_end_with_the_program():
    inv = us3l_argv(words("torchrun --nnodes=2 --rdzv_backend c10d -m us3l.cli.main train"))
    assert inv.launcher_args == ("--nnodes=2", "--rdzv_backend", "c10d", "-m", "us3l.cli.main")


@pytest.mark.parametrize("line", ["python train.py", "python -m pytest -q", "pip install -e .", "cat us3l.md",
                                  "ssh orin 'us3l widths'", "tensorboard --logdir runs/x/tb"])
def test_other_programs_are_ignored(line):
    assert us3l_argv(words(line)) is None


def test_torchrun_must_launch_us3l():
    with pytest.raises(DocCommandError, match="torchrun line launches neither"):
        us3l_argv(words("torchrun --nproc_per_node=2 train.py"))


def test_commands_carry_document_lines():
    block = Block("bash", "# c\nus3l widths \\\n  --json && us3l bogus\ntorchrun x.py\n", line=10)
    found = list(commands(block))
    assert [(c.line, c.invocation.args) for c in found if isinstance(c, Command)] == [(12, ["widths", "--json"]),
                                                                                     (12, ["bogus"])]
    assert [p[0] for p in found if not isinstance(p, Command)] == [14]


# ------------------------------------------------------------------------------------ rewriting for runs


def test_tiny_settings_are_appended_per_subcommand():
    line = "us3l train --out r && us3l eval r/checkpoint.pt | tee log && us3l bench r/checkpoint.pt --budget-ms 2"
    assert rewrite_line(line) == (
        "us3l train --out r --epochs 1 --max-steps-per-epoch 2 && "
        "us3l eval r/checkpoint.pt --calib-batches 2 | tee log && "
        "us3l bench r/checkpoint.pt --budget-ms 2 --iterations 3 --rounds 1 --warmup-ms 1")


def test_rewriting_keeps_other_commands_and_comments():
    assert rewrite_line("us3l export c.pt --width 0.5; ls onnx  # done") == "us3l export c.pt --width 0.5; ls onnx  # done"
    assert rewrite_line("echo us3l train") == "echo us3l train"
    assert rewrite_line("us3l -v train  # go") == "us3l -v train --epochs 1 --max-steps-per-epoch 2  # go"


def test_rewriting_fixes_venv_paths_and_torchrun():
    assert rewrite_line(".venv/bin/us3l eval c.pt") == "us3l eval c.pt --calib-batches 2"
    assert rewrite_line("X=1 .venv/bin/python -m us3l.cli.main train") == (
        "X=1 python -m us3l.cli.main train --epochs 1 --max-steps-per-epoch 2")
    assert rewrite_line("torchrun --standalone --nproc_per_node=2 $(which us3l) train") == (
        "torchrun --standalone --nproc_per_node=2 $(which us3l) train --epochs 1 --max-steps-per-epoch 2")


def test_rewrite_script_joins_continuations_and_keeps_heredocs():
    text = md("""
        cat > p.toml <<'EOF'
        us3l train
        EOF
        # comment
        us3l bench c.pt \\
            --budget-ms 5
        for w in 0.25 0.5; do us3l eval c.pt --widths $w; done
    """)
    assert rewrite_script(text) == md("""
        cat > p.toml <<'EOF'
        us3l train
        EOF
        # comment
        us3l bench c.pt     --budget-ms 5 --iterations 3 --rounds 1 --warmup-ms 1
        for w in 0.25 0.5; do us3l eval c.pt --widths $w --calib-batches 2; done
    """)


def test_rewrite_console_keeps_only_commands():
    assert rewrite_script("$ us3l eval c.pt\nrows...\n$ ls\n", console=True) == "us3l eval c.pt --calib-batches 2\nls\n"


# ------------------------------------------------------------------------------------ parsing with click


def test_tiny_flags_are_real_options_and_a_later_repeat_wins():
    for sub, flags in TINY.items():
        assert check_argv([sub, *(["c.pt"] if sub == "eval" else []), *flags]) is None
    name, params = parse_argv(["bench", "--arch", "us_resnet_mini", "--iterations", "200", "--rounds", "5",
                               *TINY["bench"]])
    assert name == "bench" and params["iterations"] == 3 and params["rounds"] == 1 and params["warmup_ms"] == 1.0
    _, params = parse_argv(["train", "--epochs", "400", *TINY["train"]])
    assert params["epochs"] == 1 and params["max_steps_per_epoch"] == 2


@pytest.mark.parametrize("args,message", [
    (["bench", "c.pt", "--budget", "5"], "No such option: --budget"),
    (["eval", "c.pt", "--method", "fancy"], "--method"),
    (["train", "--epochs", "many"], "--epochs"),
    (["import", "ref.pth.tar"], "Missing option '--out'"),
    (["eval"], "Missing argument"),
    (["benhc"], "No such command"),
])
def test_bad_commands_give_click_messages(args, message):
    msg = check_argv(args)
    assert msg is not None and message in msg and "\n" not in msg


def test_help_version_and_missing_files_are_fine():
    assert check_argv(["--help"]) is None and check_argv(["bench", "--help"]) is None
    assert check_argv(["--version"]) is None and check_argv([]) is None
    assert check_argv(["bench", "does/not/exist.pt", "--accuracy", "nope.json"]) is None


def test_exists_checks_are_restored_for_the_real_cli(tmp_path):
    from typer.testing import CliRunner

    from us3l.cli.main import app

    assert check_argv(["bench", str(tmp_path / "missing.pt")]) is None
    result = CliRunner().invoke(app, ["bench", str(tmp_path / "missing.pt")])
    assert result.exit_code != 0 and "does not exist" in result.output


def test_torchrun_flags_are_checked_with_torchruns_parser():
    assert check_torchrun(("--nnodes=2", "--node_rank=1", "--nproc_per_node=8", "--master_addr=node0",
                           "--master_port=29500", "-m", "us3l.cli.main")) is None
    assert check_torchrun(("--nnodes=2", "--nproc_per_node=8", "--rdzv_id=x", "--rdzv_backend=c10d",
                           "--rdzv_endpoint=node0:29400", "us3l")) is None
    assert "unrecognized arguments" in check_torchrun(("--gpus=2", "-m", "us3l.cli.main"))
