"""Docs that run: every code block of README.md and docs/*.md is executed here, tested by a named
test with small inputs, or marked as not run with its reason (the markers: tests/doc_blocks.py);
and whatever the docs name exists, so that a renamed option, module, config or key breaks a test
rather than a user:

- every command line (run or not) parses with the tool's own parser: tools/X.py's as the script
  builds it, torchrun's, Detectron2's lazyconfig_train_net's; its config loads with its
  ``KEY VALUE`` overrides; ``make`` targets are the Makefile's, ``pip`` extras setup.py's;
- every Python block compiles and what it imports exists;
- in the whole text: config keys (``MODEL.FISHNET.*``), config names and files, repository paths,
  ``fishnet_d2.*`` names, links and their anchors, the tools' options, ``make`` targets.

The blocks of docs/performance.md's generated part carry no marker: tools/benchmark.py writes
them (the commands of recorded runs, minutes to hours each), and
tests/test_benchmark_tool.py::test_the_performance_document_is_what_the_benchmark_generates checks
that the part is what the benchmark generates; their command lines are checked here as any.
The figures of the text are checked by tests/test_docs_figures.py.
"""

import ast
import functools
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Sequence, Set, Tuple

import pytest
import torch
from detectron2.config import CfgNode, LazyConfig, get_cfg, instantiate
from detectron2.engine import default_argument_parser
from detectron2.modeling import BACKBONE_REGISTRY, build_backbone
from torch.distributed.run import get_args_parser as torchrun_parser

from fishnet_d2 import FishNet, add_fishnet_config, fishnet_arch
from fishnet_d2.apps.benchmark import main as benchmark_main
from fishnet_d2.apps.benchmark.cli import parse_args as benchmark_parse_args
from fishnet_d2.apps.benchmark.models import parse_models
from fishnet_d2.apps.benchmark.report import DOC_BEGIN, DOC_END
from fishnet_d2.model_zoo import get_config_file, load_config

from .doc_blocks import (
    REPO,
    Block,
    all_blocks,
    documented_commands,
    documents,
    option_strings,
    parse_blocks,
    parse_command_line,
    tool_parser,
)

BLOCKS = all_blocks()
SHELL_BLOCKS = [block for block in BLOCKS if block.is_shell]
PYTHON_BLOCKS = [block for block in BLOCKS if block.lang == "python"]
YAML_BLOCKS = [block for block in BLOCKS if block.lang == "yaml"]

# The blocks marked "run" that this file executes: test_python_blocks_run, test_yaml_blocks_*.
RUNNABLE = ("python", "yaml")

# What a YAML block of the docs is merged onto, and what a command's placeholder config (CONFIG)
# stands for: the config of the README's examples.
YAML_BASE = "COCO-InstanceSegmentation/mask_rcnn_fishnet150_FPN_1x.yaml"

# Words of a command line that stand for the reader's own value.
PLACEHOLDER = re.compile(r"^([A-Z][A-Z_]*|\.\.\.|/path/to/.*)$")


def fishnet_cfg() -> CfgNode:
    cfg = get_cfg()
    add_fishnet_config(cfg)
    return cfg


def blocks_tested_by(test: str) -> List[Block]:
    """The blocks whose marker names ``tests/test_docs.py::<test>``."""
    return [block for block in BLOCKS if f"tests/test_docs.py::{test}" in block.test_refs()]


# --- the markers -----------------------------------------------------------------------------------


def test_every_block_is_marked():
    problems = []
    for path in documents():
        blocks, found = parse_blocks(path)
        problems += found
        for block in blocks:
            if block.kind == "":
                problems.append(f"{block.where}: no marker (<!-- doc: run | tested by tests/... | not run: why -->)")
            elif block.kind == "?":
                problems.append(f"{block.where}: unknown marker {block.marker!r}")
            elif block.kind in ("tested by", "not run") and not block.argument:
                problems.append(f"{block.where}: {block.kind} what? ({block.marker!r})")
            elif block.kind == "run" and block.lang not in RUNNABLE:
                problems.append(f"{block.where}: this file runs {RUNNABLE} blocks; name a test that runs it (tested by)")
    assert not problems, "\n".join(problems)


def test_markers_are_found_and_a_block_without_one_is_named():
    """The parser finds fenced and indented blocks and their markers, and names what is amiss."""
    text = (
        "Intro:\n\n<!-- doc: run -->\n```python\nprint(1)\n```\n\n"
        "- a list item\n\n    a list's paragraph, not code\n\n"
        "Then:\n\n<!-- doc: not run: needs COCO -->\n\n    python tools/train_net.py --eval-only\n\n"
        "```bash\nmake test\n```\n\n<!-- doc: run -->\ntext, no block\n"
    )
    blocks, problems = parse_blocks(Path("doc.md"), text)
    assert [(b.line, b.lang, b.kind, b.argument) for b in blocks] == [
        (4, "python", "run", ""), (16, "", "not run", "needs COCO"), (18, "bash", "", "")
    ]  # fmt: skip
    assert blocks[1].text == "python tools/train_net.py --eval-only\n"
    assert problems == ["doc.md:22: a doc marker with no code block right after it"]


def source_of_test(ref: str) -> Tuple[str, str]:
    """(the source of the test module, of the test function) of ``tests/x.py::name``;
    AssertionError when either is missing."""
    file, name = ref.split("::")
    path = REPO / file
    assert path.is_file(), f"{ref}: no such file"
    source = path.read_text()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return source, ast.get_source_segment(source, node)
    raise AssertionError(f"{ref}: no such test in {file}")


@functools.lru_cache(maxsize=None)
def tool_module(script: str) -> str:
    """The module whose ``main`` tools/<script> runs (``fishnet_d2.engine`` for train_net.py): a
    test may run the tool through it."""
    tree = ast.parse((REPO / "tools" / script).read_text())
    modules = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and "main" in [a.name for a in n.names]]
    return modules[0] if modules else script


def key_parts(block: Block) -> List[Set[str]]:
    """What a test that runs the block's commands or code with small inputs must mention, each as
    the set of its accepted spellings: the tools (file name, or the module whose main it runs),
    options and config keys of its command lines; the names its Python code imports."""
    parts: List[Set[str]] = []
    if block.is_shell:
        for words in documented_commands(block.text):
            for word in words[1:]:
                if re.match(r"^--[a-z]", word):
                    parts.append({word.split("=")[0]})
                elif re.match(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$", word):
                    parts.append({word})
                elif word.startswith("tools/") and word.endswith(".py") and (REPO / word).is_file():
                    parts.append({Path(word).name, tool_module(Path(word).name)})
            if words[0] == "torchrun":
                parts.append({"torchrun"})
    elif block.lang == "python":
        for node in ast.walk(ast.parse(block.text)):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                parts += [{alias.name} for alias in node.names]
    return parts


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.kind == "tested by"], ids=lambda b: b.where)
def test_tested_by_names_tests_that_exist_and_exercise_the_block(block):
    """Each test named exists; together they mention every option, key, tool and imported name of
    the block, unless one of them runs the block's own text: it reads the blocks marked with it
    (``blocks_tested_by``, or its module names its own reference)."""
    refs = block.test_refs()
    sources = [source_of_test(ref) for ref in refs]
    if any("blocks_tested_by(" in function or ref in module for ref, (module, function) in zip(refs, sources)):
        return
    missing = [part for part in key_parts(block) if not any(s in module for s in part for module, _ in sources)]
    assert not missing, f"{block.where}: {', '.join(block.test_refs())} never mention {missing}"


# --- command lines ---------------------------------------------------------------------------------


def _makefile_targets() -> Set[str]:
    text = (REPO / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", text, re.M))


def _setup_extras() -> Set[str]:
    tree = ast.parse((REPO / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "extras_require" and isinstance(node.value, ast.Dict):
            return {key.value for key in node.value.keys}
    raise AssertionError("setup.py has no extras_require dict")


def _config_path(name: str) -> str:
    """A --config-file value as the tools resolve it from the repository's root."""
    return str(REPO / name) if (REPO / name).is_file() else get_config_file(name)


def check_config(config_file: str, opts: Sequence[str]) -> None:
    """The config loads with the ``KEY VALUE`` overrides (placeholders' values left out; a
    placeholder config, ``CONFIG``, stands for YAML_BASE)."""
    path = _config_path(YAML_BASE if PLACEHOLDER.match(config_file) else config_file)
    pairs = [(k, v) for k, v in zip(opts[::2], opts[1::2]) if not PLACEHOLDER.match(v)]
    if not torch.cuda.is_available():  # the docs' commands are for GPU machines too
        pairs = [*pairs, ("MODEL.DEVICE", "cpu")]
    if not path.endswith(".py"):  # a LazyConfig's overrides are not yacs'
        load_config(path, [item for pair in pairs for item in pair])


def check_tool(script: str, argv: Sequence[str]) -> None:
    """``python <script> <argv>`` as documented: the script exists, its parser takes the
    arguments, its config loads with the overrides, and its own checks pass."""
    name = Path(script).name
    if name == "lazyconfig_train_net.py":  # Detectron2's own, from a detectron2 checkout
        args = parse_command_line(default_argument_parser(), argv)
        assert args.config_file.endswith(".py"), f"{args.config_file}: lazyconfig_train_net.py takes a LazyConfig"
        assert (REPO / args.config_file).is_file(), f"{args.config_file}: no such LazyConfig"
        return
    assert script.startswith("tools/") and (REPO / script).is_file(), f"{script}: no such tool"
    args = parse_command_line(tool_parser(name), argv)
    if getattr(args, "config_file", None):
        check_config(args.config_file, getattr(args, "opts", None) or [])
    if name == "benchmark.py":  # its checks after argparse's
        benchmark_parse_args(list(argv))
        parse_models(args.models)


def check_command(words: Sequence[str]) -> None:
    program = words[0]
    if program == "make":
        targets = [word for word in words[1:] if "=" not in word and not word.startswith("-")]
        unknown = sorted(set(targets) - _makefile_targets())
        assert not unknown, f"make {unknown}: no such target in the Makefile"
    elif program == "pip":
        for word in words[2:]:
            extras = re.search(r"\[([\w,-]+)\]$", word)
            if extras:
                unknown = sorted(set(extras.group(1).split(",")) - _setup_extras())
                assert not unknown, f"{word}: setup.py has no extra {unknown}"
    elif program == "torchrun":
        args = parse_command_line(torchrun_parser(), words[1:])
        check_tool(args.training_script, args.training_script_args)
    elif words[1:2] == ["-m"]:
        assert importlib.util.find_spec(words[2]), f"python -m {words[2]}: no such module"
    else:
        check_tool(words[1], words[2:])


@pytest.mark.parametrize("block", SHELL_BLOCKS, ids=lambda b: b.where)
def test_command_lines_parse_and_their_configs_load(block):
    """Every command of a block, run or not: a renamed tool, option, config or key fails here."""
    failures = []
    for words in documented_commands(block.text):
        try:
            check_command(words)
        except (AssertionError, FileNotFoundError, ValueError, KeyError) as e:
            failures.append(f"{' '.join(words)}\n    {type(e).__name__}: {e}")
    assert not failures, f"{block.where}:\n" + "\n".join(failures)


def test_a_renamed_option_or_key_fails_the_check():
    with pytest.raises(AssertionError, match="unrecognized arguments: --input-file"):
        check_command(["python", "tools/predict.py", "--config-file", "CONFIG", "--input", "a.jpg", "--output", "o", "--input-file", "b.jpg"])
    with pytest.raises(AssertionError, match="unrecognized arguments: --repetitions"):
        check_command(["python", "tools/benchmark.py", "--repetitions", "3"])
    with pytest.raises(ValueError, match="unknown .'fishnet151'."):
        check_command(["python", "tools/benchmark.py", "--models", "fishnet151"])
    with pytest.raises(AssertionError, match="Non-existent key: MODEL.FISHNET.DEPTHS"):
        check_command(["python", "tools/train_net.py", "--config-file", "Demo/mask_rcnn_fishnet_tiny_FPN_demo.yaml",
                       "MODEL.FISHNET.DEPTHS", "150"])  # fmt: skip
    with pytest.raises(AssertionError, match="no such target"):
        check_command(["make", "tests"])
    with pytest.raises(AssertionError, match="invalid choice: 'onnx'"):
        check_command(["torchrun", "--standalone", "tools/export_model.py", "--config-file", "CONFIG",
                       "--export-method", "onnx", "--output", "out"])  # fmt: skip


# --- Python blocks ---------------------------------------------------------------------------------


def check_python_names(text: str) -> None:
    """The block compiles; every module it imports exists and has the names it takes from it; the
    attributes it reads from those modules (``fishnet_d2.add_fishnet_config``) and the methods it
    calls on instances of their classes (``trainer = Trainer(cfg)``: ``trainer.resume_or_load()``)
    exist."""
    tree = ast.parse(text)
    names: Dict[str, object] = {}  # what the block's names are bound to: modules, their objects
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                module = importlib.import_module(alias.name)
                names[alias.asname or alias.name.split(".")[0]] = (
                    module if alias.asname else importlib.import_module(alias.name.split(".")[0])
                )
        elif isinstance(node, ast.ImportFrom):
            module = importlib.import_module(node.module)
            for alias in node.names:
                if not hasattr(module, alias.name):
                    importlib.import_module(f"{node.module}.{alias.name}")  # a submodule, or ImportError
                names[alias.asname or alias.name] = getattr(module, alias.name, None) or importlib.import_module(
                    f"{node.module}.{alias.name}"
                )
    for node in ast.walk(tree):  # instances: x = SomeClass(...)
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) and isinstance(node.value.func, ast.Name):
            cls = names.get(node.value.func.id)
            if isinstance(cls, type):
                names.update({target.id: cls for target in node.targets if isinstance(target, ast.Name)})
    methods = {id(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}  # x.method(...)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in names:
            owner = names[node.value.id]
            if type(owner).__name__ == "module" or (isinstance(owner, type) and id(node) in methods):
                assert hasattr(owner, node.attr), f"{node.value.id}.{node.attr}: no such name"


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=lambda b: b.where)
def test_python_blocks_compile_and_what_they_import_exists(block):
    try:
        check_python_names(block.text)
    except (ImportError, AssertionError, SyntaxError) as e:
        raise AssertionError(f"{block.where}: {type(e).__name__}: {e}") from None


def test_a_renamed_module_or_name_fails_the_check():
    with pytest.raises(ImportError):
        check_python_names("from fishnet_d2 import add_fishnet_cfg\n")
    with pytest.raises(ModuleNotFoundError):
        check_python_names("from fishnet_d2.modelzoo import get_config\n")
    with pytest.raises(AssertionError, match="model_zoo.get_configs: no such name"):
        check_python_names("from fishnet_d2 import model_zoo\nmodel_zoo.get_configs('x')\n")
    with pytest.raises(AssertionError, match="trainer.resume: no such name"):
        check_python_names("from fishnet_d2.engine import Trainer\ntrainer = Trainer(cfg)\ntrainer.resume()\n")


def _run_python_block(block: Block, tmp_path: Path) -> subprocess.CompletedProcess:
    """The block as a script, in a new interpreter, in an empty directory that has the checkout's
    configs/ (the README's snippets read ``configs/...``, as in a checkout); the ImageNet weights,
    datasets and caches go to that directory, and no weight can come from the internet."""
    (tmp_path / "configs").symlink_to(REPO / "configs")
    (tmp_path / "snippet.py").write_text(block.text)
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        FISHNET_D2_CACHE=str(tmp_path / "cache"),
        FISHNET_D2_MIRROR=(tmp_path / "no-mirror").as_uri(),
        DETECTRON2_DATASETS=str(tmp_path / "datasets"),
        OMP_NUM_THREADS="1",
    )
    return subprocess.run(
        [sys.executable, "snippet.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
@pytest.mark.parametrize("block", [b for b in PYTHON_BLOCKS if b.kind == "run"], ids=lambda b: b.where)
def test_python_blocks_run(block, tmp_path):
    process = _run_python_block(block, tmp_path)
    assert process.returncode == 0, f"{block.where}:\n{process.stderr[-3000:]}"


# --- YAML blocks: config fragments -----------------------------------------------------------------

def yaml_block_config(block: Block) -> CfgNode:
    """YAML_BASE with the block merged onto it (an unknown key fails, as in a user's file)."""
    cfg = load_config(YAML_BASE, ["MODEL.DEVICE", "cpu"]).clone()
    cfg.defrost()
    cfg.merge_from_other_cfg(CfgNode.load_cfg(block.text))
    return cfg


@pytest.mark.parametrize("block", YAML_BLOCKS, ids=lambda b: b.where)
def test_yaml_blocks_merge_into_a_config(block):
    cfg = yaml_block_config(block)
    named = set(re.findall(r"\bbuild_\w+_backbone\b", block.text))  # the NAME and its alternatives in comments
    unknown = sorted(name for name in named if name not in BACKBONE_REGISTRY)
    assert not unknown, f"{block.where}: {unknown} are not registered backbones"
    assert cfg.MODEL.BACKBONE.NAME in BACKBONE_REGISTRY


@pytest.mark.parametrize("block", [b for b in YAML_BLOCKS if b.kind == "run"], ids=lambda b: b.where)
def test_yaml_blocks_build_and_train_a_step(block):
    """The fragment's backbone builds, and its training step runs forward and backward."""
    cfg = yaml_block_config(block)
    cfg.MODEL.DEVICE = "cpu"
    backbone = build_backbone(cfg).train()
    features = backbone(torch.randn(1, 3, 64, 64))
    assert set(features) == set(backbone.output_shape())
    sum(f.float().mean() for f in features.values()).backward()


# --- tests named by the docs' markers --------------------------------------------------------------


def test_readme_lazyconfig_fragment_builds_the_backbone():
    """The README's LazyConfig lines, applied to the model of configs/common/models/
    mask_rcnn_fishnet_fpn.py: the bottom-up network they describe is a FishNet-150 giving the
    FPN's features."""
    (block,) = blocks_tested_by("test_readme_lazyconfig_fragment_builds_the_backbone")
    model = LazyConfig.load(str(REPO / "configs" / "common" / "models" / "mask_rcnn_fishnet_fpn.py")).model
    namespace = {"model": model}
    exec(compile(block.text, block.where, "exec"), namespace)
    backbone = instantiate(model.backbone.bottom_up)
    assert isinstance(backbone, FishNet) and backbone.arch == fishnet_arch(depth=150)
    assert list(backbone.output_shape()) == ["head2", "head3", "head4", "head5"]


def test_the_layout_names_files_that_exist():
    """README's Layout block: each directory of its first column, and each file or directory its
    description names (``modeling/``, ``config.py``), relative to it."""
    (block,) = blocks_tested_by("test_the_layout_names_files_that_exist")
    root, missing, names = REPO, [], 0
    for line in block.text.splitlines():
        first = re.match(r"^(\S+/)\s", line)
        if first:
            root = REPO / first.group(1)
            missing += [] if root.is_dir() else [first.group(1)]
        for name in re.findall(r"(?<![\w/.])([\w.]+/|[\w]+\.(?:py|sh))(?![\w/])", line[21:]):
            names += 1
            if not ((root / name).exists() or (REPO / name).exists()):
                missing.append(f"{root.relative_to(REPO)}/{name}")
    assert names > 20 and not missing, missing


@pytest.mark.slow
def test_the_benchmark_measures_and_regenerates_the_document(tmp_path, monkeypatch):
    """docs/performance.md's "Regenerate" commands, in a directory holding a copy of docs/: the
    measurement with small inputs (substituted: --quick sizes, 1 round, 1 thread, the backbone
    step of FishNet-150 and R-50 among the models it names) writes its run into the document's
    generated part and leaves the rest; the rewrite from the saved data gives the same document."""
    (block,) = blocks_tested_by("test_the_benchmark_measures_and_regenerates_the_document")
    measure, rewrite = (words[2:] for words in documented_commands(block.text))
    (tmp_path / "docs").mkdir()
    for name in ("performance.md", "performance.json"):
        (tmp_path / "docs" / name).write_bytes((REPO / "docs" / name).read_bytes())
    monkeypatch.chdir(tmp_path)

    small = {"--threads": ["1"], "--reps": ["1"], "--models": ["fishnet150", "r50"]}
    argv, option = [], None
    for word in measure:
        if word.startswith("--"):
            option = word
            argv += [word, *small.get(word, [])]
        elif option not in small:
            argv.append(word)
    assert set(small["--models"]) <= set(measure) and "--write-doc" in argv, measure
    argv += ["--quick", "--kinds", "backbone_train", "--output", str(tmp_path / "out")]
    benchmark_main(argv)
    written = (tmp_path / "docs" / "performance.md").read_text()
    before, after = (REPO / "docs" / "performance.md").read_text(), written
    assert before.split(DOC_BEGIN)[0] == after.split(DOC_BEGIN)[0] and before.split(DOC_END)[1] == after.split(DOC_END)[1]
    generated = written.split(DOC_BEGIN)[1].split(DOC_END)[0]
    assert "```bash\npython tools/benchmark.py --threads 1 --reps 1 --models fishnet150 r50" in generated
    assert "| FishNet-150 |" in generated and "| R-50 |" in generated

    benchmark_main(list(rewrite))  # as written: --from-json docs/performance.json --write-doc docs/performance.md
    assert (tmp_path / "docs" / "performance.md").read_text() == written


# --- names in the text -----------------------------------------------------------------------------

TEXTS = {path: path.read_text(encoding="utf-8") for path in documents()}

# Named in the text as Detectron2's, SLURM's or pip's, not this repository's.
EXTERNAL_PATHS = {
    "tools/lazyconfig_train_net.py", "tools/deploy/export_model.py", "demo/demo.py", "configs/Detectron1-Comparisons",
    "main.py",  # the official FishNet code's
}  # fmt: skip
EXTERNAL_OPTIONS = {
    "--job-name", "--nodes", "--ntasks-per-node", "--gpus-per-node", "--cpus-per-task", "--time", "--signal",
    "--requeue", "--open-mode",  # SLURM's sbatch
    "--no-build-isolation",  # pip's
}  # fmt: skip


def code_spans(text: str) -> List[str]:
    """The inline code of a Markdown text (fenced blocks left out), a span's line breaks as spaces."""
    text = re.sub(r"^ {0,3}(```|~~~).*?^ {0,3}\1", "", text, flags=re.S | re.M)
    return [span.replace("\n", " ") for span in re.findall(r"`([^`]+)`", text)]


def _per_document(check) -> List[str]:
    """``check(text)``'s problems in each document, named by file."""
    return sorted({f"{path.relative_to(REPO)}: {problem}" for path, text in TEXTS.items() for problem in check(text)})


def missing_config_keys(text: str) -> Iterator[str]:
    cfg = fishnet_cfg()
    for key in sorted(set(re.findall(r"\b(?:MODEL|SOLVER|INPUT|DATASETS|DATALOADER|TEST)(?:\.[A-Z0-9_]+)+", text))):
        node = cfg
        for part in key.split("."):
            if not (isinstance(node, CfgNode) and part in node):
                yield f"{key}: no such config key"
                break
            node = node[part]


def test_config_keys_in_the_text_exist():
    assert not (problems := _per_document(missing_config_keys)), "\n".join(problems)


def _expand(pattern: str) -> List[str]:
    """``a{1,2}b{x,y}`` -> a1bx, a1by, a2bx, a2by."""
    match = re.search(r"\{([^{}]*)\}", pattern)
    if not match:
        return [pattern]
    return [p for choice in match.group(1).split(",") for p in _expand(pattern[: match.start()] + choice + pattern[match.end() :])]


ROOTS = ("tools", "tests", "fishnet_d2", "configs", "docs", ".ci")
CONFIG_DIRS = ("COCO-[A-Za-z*]+", "Misc", "Demo", "Ablation", "common")
PATH = re.compile(r"(?<![\w/.$-])((?:%s)/[\w./*{},-]*|(?:%s)/[\w./*{},-]+)" % ("|".join(map(re.escape, ROOTS)), "|".join(CONFIG_DIRS)))


@functools.lru_cache(maxsize=None)
def _repository_files() -> Tuple[str, ...]:
    files = [p for root in ROOTS for p in (REPO / root).rglob("*.py")] + list(REPO.glob("*.py"))
    return tuple(p.relative_to(REPO).as_posix() for p in files)


def missing_paths(text: str) -> Iterator[str]:
    """Config names (``COCO-Detection/...yaml``, ``{a,b}`` and ``*`` expanded) that no config
    file has, and paths under ROOTS that do not exist; a Python file named alone in inline code
    (``optimize/folding.py``, ``stages.py``) that no file of the repository is."""
    for token in PATH.findall(text):
        token = token.split("::")[0].rstrip(".,")
        if token in EXTERNAL_PATHS:
            continue
        for name in _expand(token):
            under = REPO if name.split("/")[0] in ROOTS else REPO / "configs"
            if not list(under.glob(name.rstrip("/"))):
                yield f"{name}: no such file or directory"
    for span in code_spans(text):
        if re.match(r"^[\w/]*\w\.py$", span) and span not in EXTERNAL_PATHS:
            if not any(("/" + f).endswith("/" + span) for f in _repository_files()):
                yield f"{span}: no such file"


def test_configs_and_repository_paths_in_the_text_exist():
    assert not (problems := _per_document(missing_paths)), "\n".join(problems)


def missing_python_names(text: str) -> Iterator[str]:
    """``fishnet_d2.x.y`` names that do not import (a module) or resolve (an attribute)."""
    for name in sorted(set(re.findall(r"\bfishnet_d2(?:\.\w+)+", text))):
        parts = name.split(".")
        for k in range(len(parts), 0, -1):  # the longest prefix that is a module
            try:
                obj = importlib.import_module(".".join(parts[:k]))
                break
            except ModuleNotFoundError:
                continue
        for attr in parts[k:]:
            if not hasattr(obj, attr):
                yield f"{name}: no such name"
                break
            obj = getattr(obj, attr)


def test_fishnet_d2_names_in_the_text_exist():
    assert not (problems := _per_document(missing_python_names)), "\n".join(problems)


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> Set[str]:
    text = re.sub(r"^ {0,3}(```|~~~).*?^ {0,3}\1", "", path.read_text(encoding="utf-8"), flags=re.S | re.M)
    return {_anchor(heading) for heading in re.findall(r"^#{1,6}\s+(.*)$", text, re.M)}


def test_links_lead_to_files_and_headings_that_exist():
    problems = []
    for path, text in TEXTS.items():
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"^[a-z]+:", target):
                continue  # https:, mailto:
            file, _, anchor = target.partition("#")
            linked = (path.parent / file) if file else path
            if not linked.exists():
                problems.append(f"{path.relative_to(REPO)}: ({target}): no such file")
            elif anchor and anchor not in _anchors(linked):
                problems.append(f"{path.relative_to(REPO)}: ({target}): no such heading in {file or path.name}")
    assert not problems, "\n".join(problems)


@functools.lru_cache(maxsize=None)
def known_options() -> Set[str]:
    """Every option of the tools the docs name, of Detectron2's default parser and of torchrun."""
    tools = {Path(t).name for text in TEXTS.values() for t in re.findall(r"tools/\w+\.py", text) if (REPO / t).is_file()}
    parsers = [tool_parser(name) for name in sorted(tools)] + [default_argument_parser(), torchrun_parser()]
    return {option for parser in parsers for option in option_strings(parser)}


def unknown_options(text: str) -> Iterator[str]:
    for option in sorted(set(re.findall(r"(?<![\w-])--[a-z][\w-]*", text))):
        if option not in known_options() and option not in EXTERNAL_OPTIONS:
            yield f"{option}: no tool of the docs has this option"


def test_options_in_the_text_are_options_of_a_tool():
    """An option named anywhere in the text (``--video-input``), run or not, is one of a tool's."""
    assert not (problems := _per_document(unknown_options)), "\n".join(problems)


def inline_command_problems(text: str) -> Iterator[str]:
    """Inline ``make`` and ``pip install`` commands and tool command lines (``python tools/X.py
    ...``, or ``tools/X.py ...``) checked as the blocks' are."""
    for span in code_spans(text):
        span = re.sub(r"^(tools/\w+\.py)\b", r"python \1", span)
        for words in documented_commands(span):
            if (words[0] == "make" and len(words) > 1) or (words[0] in ("python", "pip") and len(words) > 2):
                try:
                    check_command(words)
                except (AssertionError, FileNotFoundError, ValueError, KeyError) as e:
                    yield f"`{span}`: {e}"


def test_inline_commands_are_right():
    assert not (problems := _per_document(inline_command_problems)), "\n".join(problems)


def test_a_renamed_key_or_file_in_the_text_fails_the_checks():
    text = "Set `MODEL.FISHNET.DEPTHS` in `configs/COCO-Detection/faster_rcnn_fishnet{99,152}_FPN_1x.yaml`, see `optimize/fold.py`."
    assert list(missing_config_keys(text)) == ["MODEL.FISHNET.DEPTHS: no such config key"]
    assert list(missing_paths(text)) == [
        "configs/COCO-Detection/faster_rcnn_fishnet152_FPN_1x.yaml: no such file or directory",
        "optimize/fold.py: no such file",
    ]
    text = "`fishnet_d2.engine.REQUEUE_STATUS`, `make tests`, `tools/predict.py --input x --output y --threshold 0.5`, `--video`, `pip install fishnet-d2[app]`."
    assert list(missing_python_names(text)) == ["fishnet_d2.engine.REQUEUE_STATUS: no such name"]
    assert [p.split(": ")[0] for p in inline_command_problems(text)] == [
        "`make tests`", "`python tools/predict.py --input x --output y --threshold 0.5`", "`pip install fishnet-d2[app]`"
    ]  # fmt: skip
    assert [problem.split(":")[0] for problem in unknown_options(text)] == ["--threshold", "--video"]
