"""The repository stands alone: no tracked file points outside it."""
import os
import re
import subprocess

from tiny import ROOT

# Written in pieces so that this file does not match its own patterns.
OUTSIDE = [
    re.escape(".." + "/shared"),                          # a folder beside the clone
    r"""['"]\.\.['"],\s*['"]""" + "shared",                # ... also when joined with os.path.join
    r"(?<![\w.~$/-])/(?:" + "work|home|root|Users|mnt" + r")/[\w.-]+",   # absolute paths of a machine
    r"\b[A-Z]:\\" + "Users",
]
BINARY = (".png", ".jpg", ".npz", ".pt", ".pth")


def tracked_files():
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
        return [name for name in out.decode().split("\0") if name]
    except (OSError, subprocess.CalledProcessError):   # not a git checkout: walk the tree
        skip = {".git", ".venv", "train_logs", "__pycache__", ".pytest_cache"}
        files = []
        for parent, dirs, names in os.walk(ROOT):
            dirs[:] = [d for d in dirs if d not in skip]
            files += [os.path.relpath(os.path.join(parent, name), ROOT) for name in names]
        return files


def test_no_tracked_file_refers_outside_the_repository():
    pattern = re.compile("|".join(OUTSIDE))
    hits = []
    for name in tracked_files():
        if name.endswith(BINARY):
            continue
        with open(os.path.join(ROOT, name), encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, 1):
                if pattern.search(line):
                    hits.append(f"{name}:{number}: {line.strip()[:120]}")
    assert not hits, "paths outside the repository:\n" + "\n".join(hits)


def test_the_pattern_catches_what_it_should():
    pattern = re.compile("|".join(OUTSIDE))
    for text in ["open('../" "shared/seeds')", 'os.path.join(ROOT, "..", "sha' 'red", "seeds")',
                 "--outdir /" "work/main/train_logs", "/" "home/me/data",
                 "C:\\" "Users\\me"]:
        assert pattern.search(text), text
    for text in ["--datadir data/cifar10", "https://github.com/Jae-Moo/UOTM", "$HOME/.cache/uotm",
                 "~/.cache/x", "train_logs/digits/demo"]:
        assert not pattern.search(text), text


def imported_modules(path):
    """Top-level names of every module `path` imports (absolute imports, anywhere in the file)."""
    import ast
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_layering_uot_knows_no_dataset_network_or_script():
    """uot/ is the math and the plumbing: it imports nothing of datasets_prep/, score_sde/ or the
    scripts, which all build on it (the rule of uot/__init__.py)."""
    forbidden = {"datasets_prep", "score_sde", "train", "train_toy", "test", "utils", "scripts"}
    uot = os.path.join(ROOT, "uot")
    offenders = {name: sorted(imported_modules(os.path.join(uot, name)) & forbidden)
                 for name in os.listdir(uot) if name.endswith(".py")}
    assert not {k: v for k, v in offenders.items() if v}, offenders
    # and the networks know no dataset
    score_sde = os.path.join(ROOT, "score_sde")
    for name in os.listdir(score_sde):
        if name.endswith(".py"):
            assert not imported_modules(os.path.join(score_sde, name)) & (forbidden - {"uot"}), name


def project_modules():
    """{dotted name: path} of the project's importable modules (packages by their __init__)."""
    modules = {}
    for name in ("train", "train_toy", "utils"):
        modules[name] = os.path.join(ROOT, name + ".py")
    for package in ("uot", "score_sde", "datasets_prep"):
        for parent, dirs, names in os.walk(os.path.join(ROOT, package)):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            dotted = os.path.relpath(parent, ROOT).replace(os.sep, ".")
            for file in names:
                if file.endswith(".py"):
                    stem = file[:-3]
                    modules[dotted if stem == "__init__" else f"{dotted}.{stem}"] = os.path.join(parent, file)
    return modules


def import_graph():
    """{module: the project modules it imports, anywhere in its file}. `from pkg import name`
    imports pkg.name when that is a module, else pkg; the implicit import of a package's
    __init__ by its submodules is left out (Python runs it first: it is no circle)."""
    import ast
    modules = project_modules()
    graph = {}
    for module, path in modules.items():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        targets = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names if alias.name in modules)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in modules:
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    targets.add(sub if sub in modules else node.module)
        graph[module] = targets - {module}
    return graph


def circles(graph):
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_import_graph_has_no_circle():
    """No module imports, directly or through others, a module that imports it back (function-level
    imports count: they only hide a circle). The measures stand above the data: only
    datasets_prep.measures imports them within datasets_prep."""
    graph = import_graph()
    assert circles(graph) == []
    for module, targets in graph.items():
        if module.startswith("datasets_prep") and not module.startswith("datasets_prep.measures"):
            assert not any(t.startswith("datasets_prep.measures") for t in targets), module


def test_the_circle_finder_finds_circles():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


# --- the pages: README.md and docs/*.md -------------------------------------------------

def pages():
    docs = os.path.join(ROOT, "docs")
    return ["README.md"] + sorted(os.path.join("docs", name) for name in os.listdir(docs) if name.endswith(".md"))


def outside_code_blocks(text):
    """(line number, line) of every line of a markdown text outside its ``` blocks."""
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            yield number, line


def markdown_tables(text):
    """[[(line number, line), ...]] for every table: consecutive lines that start with '|'."""
    tables, current = [], []
    for number, line in outside_code_blocks(text):
        if line.lstrip().startswith("|"):
            if current and current[-1][0] != number - 1:
                tables.append(current)
                current = []
            current.append((number, line))
        elif current:
            tables.append(current)
            current = []
    return tables + ([current] if current else [])


def cell_count(line):
    """Cells of a table line: '|' separates them unless escaped ('\\|' is a '|' in a cell)."""
    line = line.strip()
    line = line[1:] if line.startswith("|") else line
    line = line[:-1] if line.endswith("|") and not line.endswith("\\|") else line
    return len(re.split(r"(?<!\\)\|", line))


SEPARATOR = re.compile(r"\|?(\s*:?-+:?\s*\|)*\s*:?-+:?\s*\|?")


def test_every_markdown_table_has_as_many_cells_in_every_row_as_in_its_header():
    """A table whose separator or rows have another number of cells than its header does not
    render (the separator) or loses cells (the rows)."""
    broken = []
    for name in pages():
        with open(os.path.join(ROOT, name), encoding="utf-8") as f:
            text = f.read()
        for table in markdown_tables(text):
            (first, header), *rest = table
            if not rest or not SEPARATOR.fullmatch(rest[0][1].strip()):
                broken.append(f"{name}:{first}: no separator line under the header")
                continue
            cells = cell_count(header)
            broken += [f"{name}:{number}: {cell_count(line)} cells, the header has {cells}"
                       for number, line in rest if cell_count(line) != cells]
    assert not broken, "\n".join(broken)


def test_the_table_parser_counts_cells_as_markdown_does():
    assert cell_count("| a | b |") == 2 and cell_count("|---|---:|") == 2 and cell_count("| | x |") == 2
    assert cell_count(r"| `PHI=kl\|chi` | y |") == 2   # an escaped bar stays in its cell
    text = "| a | b |\n|---|---|\n| 1 | 2 |\n\n```\n| not | a | table |\n```\n| c |\n|---|\n"
    assert [[number for number, _ in table] for table in markdown_tables(text)] == [[1, 2, 3], [8, 9]]
    assert SEPARATOR.fullmatch("|---|---:|:---:|") and not SEPARATOR.fullmatch("| a | b |")


def anchors(text):
    """The #anchors of a page's headings, as GitHub makes them (a repeated heading gets -1, -2...)."""
    seen, found = {}, set()
    for _, line in outside_code_blocks(text):
        heading = re.match(r"#{1,6}\s+(.*)", line)
        if heading:
            slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
            found.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
            seen[slug] = seen.get(slug, 0) + 1
    return found


def test_every_relative_link_of_the_pages_leads_to_a_file_and_heading_that_exist():
    broken = []
    for name in pages():
        with open(os.path.join(ROOT, name), encoding="utf-8") as f:
            text = f.read()
        for number, line in outside_code_blocks(text):
            for target in re.findall(r"\]\(([^)\s]+)\)", line):
                if re.match(r"[a-z]+:", target):   # https:, mailto:
                    continue
                path, _, anchor = target.partition("#")
                full = os.path.normpath(os.path.join(ROOT, os.path.dirname(name), path)) if path \
                    else os.path.join(ROOT, name)
                if not os.path.exists(full):
                    broken.append(f"{name}:{number}: {target}: no such file")
                elif anchor and full.endswith(".md"):
                    with open(full, encoding="utf-8") as f:
                        if anchor not in anchors(f.read()):
                            broken.append(f"{name}:{number}: {target}: no such heading")
    assert not broken, "\n".join(broken)
