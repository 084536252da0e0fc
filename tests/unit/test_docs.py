"""The README and docs/*.md stay true to the tree they describe.

For every page: each relative link (markdown and image) names a file of the repository, and a
``#anchor`` into a markdown page names one of its headings (GitHub's slugs); each ``make TARGET`` is
a rule of the Makefile; each project path given in a command or in inline code (``train/*.py``,
``eval/*.py``, ``bench/*.py``, ``configs/...yaml``, ``slurm/...``, a test named as
``unit/test_x.py::test_y``) exists; each ``--flag`` given to one of the project's scripts
(``python eval/evaluate.py ...``, ``accelerate launch ... train/finetune.py ...``, ``python -m
sumtune_demo ...``, an sbatch script that passes its arguments on to one) is an option of that
script's parser; and each dotted config override (``train.lr=3e-4`` after a script, or alone in
inline code as ``train.lr=3e-4`` or ``train.batching: grouped``) is a key of the typed config
(sumtune/config.py) with a value of its type, and so is each key that starts a table row (the
config reference in docs/configuration.md).

The scripts are not imported (they pull in torch and transformers): their option strings are read
from the ``add_argument`` calls in their source, plus those of ``sumtune.cli.config_parser`` for the
scripts that build their parser with it. A flag added some other way would be reported as unknown:
add its reading here rather than drop the check.
"""

from __future__ import annotations

import ast
import dataclasses
import re
import shlex
import typing
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

from sumtune import cli, config
from sumtune.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]

# ----------------------------------------------------------------------------- reading a page


@dataclass
class Snippet:
    """A command line (a fenced block's line, backslash continuations joined) or an inline code span."""

    line: int
    text: str
    fenced: bool


_FENCE = re.compile(r"^\s*(```+|~~~+)\s*([\w+-]*)")
_INLINE = re.compile(r"(`+)(.+?)\1")
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
# Fenced blocks that hold no shell commands (their lines are code or output, not something to run).
_NOT_SHELL = {"python", "py", "yaml", "yml", "json", "text", "txt", "console-output", "diff"}


def read_page(path: Path) -> tuple[list[tuple[int, str]], list[Snippet]]:
    """(prose lines outside fenced blocks as (line number, text), code snippets)."""
    prose, snippets = [], []
    fence, lang, pending, pending_line = None, "", "", 0
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        match = _FENCE.match(line)
        if fence is None and match:
            fence, lang = match.group(1), match.group(2).lower()
            continue
        if fence is not None:
            if line.strip().startswith(fence[0] * len(fence)) and not line.strip().strip(fence[0]):
                fence = None
                continue
            if lang in _NOT_SHELL or line.lstrip().startswith(">>>"):
                continue
            stripped = line.rstrip()
            if not pending:
                pending_line = number
            if stripped.endswith("\\"):
                pending += stripped[:-1] + " "
                continue
            snippets.append(Snippet(pending_line, pending + stripped, True))
            pending = ""
            continue
        prose.append((number, line))
        for span in _INLINE.finditer(line):
            snippets.append(Snippet(number, span.group(2).strip(), False))
    return prose, snippets


# ----------------------------------------------------------------------------- links and anchors


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: markup dropped, lower case, punctuation removed, spaces -> '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text stays
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset[str]:
    seen: dict[str, int] = {}
    out = set()
    prose, _ = read_page(path)
    for _, line in prose:
        match = re.match(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        slug = github_slug(match.group(2))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return frozenset(out)


def link_problems(page: Path) -> list[str]:
    problems = []
    prose, _ = read_page(page)
    for number, line in prose:
        for match in _LINK.finditer(_INLINE.sub("", line)):
            target = match.group(1)
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            where = f"{rel(page)}:{number}: link '{target}'"
            file_part, _, anchor = target.partition("#")
            dest = (page.parent / file_part).resolve() if file_part else page
            if REPO not in dest.parents and dest != REPO:
                problems.append(f"{where} points outside the repository")
                continue
            if not dest.exists():
                problems.append(f"{where}: {rel(dest)} does not exist")
                continue
            if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                problems.append(f"{where}: {rel(dest)} has no heading with the anchor '#{anchor}'")
    return problems


# ----------------------------------------------------------------------------- commands


@cache
def make_targets() -> frozenset[str]:
    targets = set()
    for line in (REPO / "Makefile").read_text(encoding="utf-8").splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+(?:[ \t]+[A-Za-z0-9_.-]+)*)[ \t]*:(?!=)", line)
        if match:
            targets.update(match.group(1).split())
    return frozenset(targets)


# A path into the repository's own source (outputs such as bench/gpu_results.md are not checked).
_SOURCE_PATH = re.compile(
    r"^(?:\./)?((?:sumtune|sumtune_demo|train|eval|bench|configs|slurm|tests|docs)/[\w./-]*)$")
_SOURCE_SUFFIXES = {".py", ".yaml", ".yml", ".json", ".sh", ".sbatch"}
# A test named as the bad-input table names them: unit/test_data.py::test_x (under tests/).
_TEST_ID = re.compile(r"^(?:tests/)?((?:unit|integration)/test_\w+\.py)(?:::(\w+))?$")
_SCRIPT = re.compile(r"^(?:\./)?((?:train|eval|bench)/\w+\.py)$")
_SHELL_BREAK = {"|", "||", "&&", ";", "&", "<", ">", ">>", "2>", "2>&1"}
_YAML_KEY = re.compile(r"^([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+):\s+(\S.*)$")
_DOTTED_OVERRIDE = re.compile(r"^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+=\S*$")


def tokens(text: str) -> list[str]:
    text = re.sub(r"(^|\s)#.*$", "", text)  # a shell comment
    try:
        return shlex.split(text)
    except ValueError:  # an unbalanced quote in a fragment of prose
        return text.split()


@cache
def script_options(script: str) -> tuple[dict[str, str], bool]:
    """(option string -> how many values it takes: "0", "1" or "+", takes dotted overrides) of a
    project script or ``-m`` package, read from its source."""
    path = REPO / script
    if path.is_dir():
        path = path / "__main__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    options, overrides = {"-h": "0", "--help": "0"}, False
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and any(a.name == "main" for a in node.names):
            target = REPO / (node.module.replace(".", "/") + ".py")
            if target.is_file():  # python -m pkg: __main__.py runs main() of a module of the package
                more, takes = script_options(str(target.relative_to(REPO)))
                options |= more
                overrides |= takes
        if not isinstance(node, ast.Call):
            continue
        name = getattr(node.func, "attr", None) or getattr(node.func, "id", None)
        if name == "add_argument":
            kw = {k.arg: k.value.value for k in node.keywords if isinstance(k.value, ast.Constant)}
            if str(kw.get("action", "")).startswith(("store_true", "store_false", "count", "help", "version")):
                takes = "0"
            else:
                takes = "+" if kw.get("nargs") in ("+", "*") else "1"
            for arg in node.args:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and arg.value.startswith("-"):
                    options[arg.value] = takes
        elif name == "config_parser":
            for action in cli.config_parser("")._actions:  # noqa: SLF001
                for opt in action.option_strings:
                    options[opt] = "0" if action.nargs == 0 else "1"
            overrides = True
        elif name == "split_overrides":
            overrides = True
    return options, overrides


def script_behind(sbatch: str) -> str | None:
    """The train/ or eval/ script an sbatch script passes its arguments on to."""
    match = re.search(r"\b((?:train|eval)/\w+\.py)\b", (REPO / sbatch).read_text(encoding="utf-8"))
    return match.group(1) if match else None


_PLACEHOLDER = re.compile(r"^[A-Z][A-Z_]*$")  # train.rouge_every=N, resume=PATH


def override_problem(item: str) -> str | None:
    """None when ``KEY=VALUE`` is a key of the typed config with a value of its type (a placeholder
    value such as ``N`` or ``PATH``: the key only)."""
    dotted, _, value = item.partition("=")
    if _PLACEHOLDER.match(value):
        return key_problem(dotted)
    try:
        config._build(config.RunConfig, config.upgrade(config._parse_override(item)))  # noqa: SLF001
    except ConfigError as err:
        return str(err)
    return None


def key_problem(dotted: str) -> str | None:
    if dotted in config.RENAMED:
        return None
    node: object = config.RunConfig
    for i, part in enumerate(dotted.split(".")):
        if not dataclasses.is_dataclass(node):
            return None if typing.get_origin(node) is dict else f"config key '{dotted}': {'.'.join(dotted.split('.')[:i])} has no keys"
        hints = typing.get_type_hints(node)
        if part not in hints:
            return f"unknown config key '{dotted}'"
        node = hints[part]
    return None


_LAUNCHERS = {"make", "python", "python3", "accelerate", "sbatch", "srun", "bash", "pytest", "torchrun"}


def is_command(words: list[str]) -> bool:
    """Whether a snippet reads as a command line (after its leading VAR=value assignments)."""
    rest = [w for w in words if not re.match(r"^[A-Z_][A-Z0-9_]*=", w)] if words else []
    if not rest:
        return False
    first = rest[0]
    return (first in _LAUNCHERS or first.rsplit("/", 1)[-1] in _LAUNCHERS or bool(_SCRIPT.match(first))
            or first.startswith("slurm/"))


def path_problem(word: str) -> str | None:
    """A problem with a project path or test id, None when it exists (or is no such path)."""
    if test_id := _TEST_ID.match(word):
        file, func = test_id.groups()
        test_file = REPO / "tests" / file
        if not test_file.is_file():
            return f"tests/{file} does not exist"
        if func and not re.search(rf"^\s*(?:async\s+)?def {func}\(", test_file.read_text(encoding="utf-8"), re.M):
            return f"tests/{file} has no test {func}"
        return None
    path = _SOURCE_PATH.match(word)
    if not path or re.search(r"[{}*<>]|NNN", word):
        return None
    name = path.group(1)
    if name.endswith("/"):
        return None if (REPO / name).is_dir() else f"{name} does not exist"
    if Path(name).suffix in _SOURCE_SUFFIXES and not (REPO / name).is_file():
        return f"{name} does not exist"
    return None


def command_problems(page: Path) -> list[str]:
    problems = []
    _, snippets = read_page(page)
    for snip in snippets:
        shown = snip.text if len(snip.text) < 120 else snip.text[:117] + "..."
        where = f"{rel(page)}:{snip.line}: `{shown}`"
        words = tokens(snip.text)
        command = is_command(words)
        if not snip.fenced and not command:
            # Inline code that is not a command: a config setting, or a single path.
            yaml_key = _YAML_KEY.match(snip.text)
            item = f"{yaml_key.group(1)}={yaml_key.group(2)}" if yaml_key else snip.text
            if _DOTTED_OVERRIDE.match(item) and (err := override_problem(item)):
                problems.append(f"{where}: {err}")
            elif len(words) == 1 and (err := path_problem(words[0])):
                problems.append(f"{where}: {err}")
            continue
        problems += [f"{where}: {err}" for w in words if (err := path_problem(w))]
        if command:
            problems += [f"{where}: {err}" for err in command_line_problems(words)]
    return problems


def command_line_problems(words: list[str]) -> list[str]:
    """make targets, and the flags and dotted overrides given to the project's scripts."""
    problems = []
    script, options, takes_overrides, skip, many = None, {}, False, 0, False
    for i, word in enumerate(words):
        if word in _SHELL_BREAK or word[0] in "<>":
            script, skip, many = None, 0, False
            continue
        if word == "make" and i + 1 < len(words) and re.fullmatch(r"[\w.-]+", words[i + 1]):
            if words[i + 1] not in make_targets():
                problems.append(f"make target '{words[i + 1]}' is not in the Makefile")
            continue
        module = words[i + 1] if word == "-m" and i + 1 < len(words) else None
        if module and module.split(".")[0] in ("sumtune", "sumtune_demo"):
            mod_path = module.replace(".", "/")
            found = mod_path if (REPO / mod_path).is_dir() else f"{mod_path}.py"
            if not (REPO / found).exists():
                problems.append(f"python -m {module}: no such module in the repository")
                script = None
            else:
                script, (options, takes_overrides), skip, many = module, script_options(found), 1, False
            continue
        if (match := _SCRIPT.match(word)) and (REPO / match.group(1)).is_file():
            script, (options, takes_overrides), skip, many = match.group(1), script_options(match.group(1)), 0, False
            continue
        if word.startswith("slurm/") and word.endswith(".sbatch") and (REPO / word).is_file():
            if behind := script_behind(word):
                script, (options, takes_overrides), skip, many = behind, script_options(behind), 0, False
            continue
        if script is None:
            continue
        if skip:  # a value of the flag before
            skip -= 1
            continue
        if many and not word.startswith("-") and not cli._OVERRIDE.match(word):  # noqa: SLF001
            continue  # one more value of a flag that takes several
        many = False
        if re.match(r"^--?[A-Za-z]", word):
            flag, has_value = word.split("=", 1)[0], "=" in word
            if flag not in options:
                known = ", ".join(sorted(o for o in options if o.startswith("--")))
                problems.append(f"{script} has no option {flag} (its options: {known})")
            elif not has_value:
                skip, many = (1, False) if options[flag] == "1" else (0, options[flag] == "+")
        elif cli._OVERRIDE.match(word) and takes_overrides:  # noqa: SLF001
            if err := override_problem(word):
                problems.append(err)
    return problems


_TABLE_KEY = re.compile(r"^\|\s*`([a-z_]+(?:\.[a-z_0-9]+)+)`\s*\|")


def table_key_problems(page: Path) -> list[str]:
    """A table row whose first cell is a dotted name in code (the config reference's rows) names a
    key of the typed config."""
    sections = {name for name, tp in typing.get_type_hints(config.RunConfig).items() if dataclasses.is_dataclass(tp)}
    prose, _ = read_page(page)
    return [f"{rel(page)}:{number}: `{match.group(1)}`: {err}" for number, line in prose
            if (match := _TABLE_KEY.match(line)) and match.group(1).split(".")[0] in sections
            and (err := key_problem(match.group(1)))]


def rel(path: Path) -> str:
    try:
        return str(path.relative_to(REPO))
    except ValueError:
        return str(path)


# ----------------------------------------------------------------------------- the tests


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_links_resolve(page):
    problems = link_problems(page)
    assert not problems, "broken links in the docs:\n" + "\n".join(problems)


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_commands_paths_flags_and_config_keys_exist(page):
    problems = command_problems(page) + table_key_problems(page)
    assert not problems, "commands in the docs that would not run as written:\n" + "\n".join(problems)


def test_every_docs_page_is_reachable_from_the_readme():
    """A page nobody links to is a page nobody reads: README -> docs/X.md, directly or through another page."""
    reached, todo = set(), [REPO / "README.md"]
    while todo:
        page = todo.pop()
        if page in reached:
            continue
        reached.add(page)
        prose, _ = read_page(page)
        for _, line in prose:
            for match in _LINK.finditer(_INLINE.sub("", line)):
                target = match.group(1).partition("#")[0]
                dest = (page.parent / target).resolve()
                if target and dest.suffix == ".md" and dest.is_file() and dest in PAGES:
                    todo.append(dest)
    missing = [rel(p) for p in PAGES if p not in reached]
    assert not missing, f"docs pages no link from README.md leads to: {', '.join(missing)}"


def test_the_checks_catch_what_they_are_for(tmp_path, monkeypatch):
    """The checker fails on a page broken in each way it looks for (and passes a sound one)."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (tmp_path / "Makefile").write_text((REPO / "Makefile").read_text())
    for sub in ("train", "eval", "configs/train", "sumtune_demo", "tests/unit"):
        (tmp_path / sub).mkdir(parents=True, exist_ok=True)
    for name in ("train/finetune.py", "eval/evaluate.py", "configs/train/demo_lora.yaml",
                 "sumtune_demo/__main__.py", "sumtune_demo/build.py", "tests/unit/test_data.py"):
        (tmp_path / name).write_text((REPO / name).read_text())
    (docs / "other.md").write_text("# Other page\n\n## Some `code` here: yes\n")
    page = tmp_path / "README.md"
    page.write_text(
        "# Page\n\n[ok](docs/other.md#some-code-here-yes) [gone](docs/missing.md) "
        "[anchor](docs/other.md#nope) ![img](docs/nope.png) [out](../elsewhere.md)\n\n"
        "`make demo` `make nosuchtarget` `train/nosuch.py` `configs/train/nosuch.yaml` "
        "`unit/test_data.py::test_no_such_test` `train.lr=3e-4` `train.learnig_rate=1` "
        "`train.batching: packd`\n\n| key | default |\n|---|---|\n| `train.lr` | 3e-4 |\n| `train.nope` | 1 |\n\n"
        "```bash\n"
        "accelerate launch --config_file x.yaml train/finetune.py \\\n"
        "    --config configs/train/demo_lora.yaml train.epochs=2 model.lora.rank=4 --no-such-flag\n"
        "python eval/evaluate.py --score-only p.jsonl --candidate a=b --outt d\n"
        "python -m sumtune_demo --out demo --toxic-share 0.5 --toxicity 1\n"
        "```\n")
    monkeypatch.setitem(globals(), "REPO", tmp_path)
    for fn in (make_targets, script_options, anchors):
        fn.cache_clear()
    try:
        found = "\n".join(link_problems(page) + command_problems(page) + table_key_problems(page))
    finally:
        for fn in (make_targets, script_options, anchors):
            fn.cache_clear()
    expected = ["docs/missing.md does not exist", "has no heading with the anchor '#nope'",
                "docs/nope.png does not exist", "'../elsewhere.md' points outside the repository",
                "make target 'nosuchtarget'", "train/nosuch.py does not exist",
                "configs/train/nosuch.yaml does not exist", "has no test test_no_such_test",
                "unknown config key 'train.learnig_rate'", "'packd' is not one of",
                "unknown config key 'model.lora.rank'", "train/finetune.py has no option --no-such-flag",
                "eval/evaluate.py has no option --outt", "sumtune_demo has no option --toxicity",
                "`train.nope`: unknown config key 'train.nope'"]
    for text in expected:
        assert text in found, f"the checker missed: {text}\nit found:\n{found}"
    assert len(found.splitlines()) == len(expected), found
    assert "README.md:3:" in found  # file and line are named
