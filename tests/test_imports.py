"""The ladder is the import graph: each file imports only the rungs below it, nothing imports the
command lines (train.py, sample.py), and there is no circle. Read from the source with ast."""
import ast
import glob
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A module may import, at its top, only modules on a lower rung. Its demo (the block under
# `if __name__ == "__main__":`) runs it as a script and may also use data.py to draw data.
RUNGS = {
    "shapes": 0, "vae": 0, "vqvae": 0, "unet": 0, "clip": 0,  # each stands alone
    "diffusion": 1, "data": 1,
    "prior": 2, "decoder": 2, "upsample": 2,
    "unclip": 3, "stages": 3,
    "checkpoint": 4,
    "evaluate": 5,
    "train": 6, "sample": 6,
}
ENTRY_POINTS = ("train", "sample")


def project_imports(tree, top_level_only):
    """The project modules a parsed file imports: at its top (outside functions and its
    `if __name__ == "__main__":` demo), or anywhere."""
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names & set(RUNGS)


def parse(path):
    with open(path) as f:
        return ast.parse(f.read(), path)


def notebook_code(path):
    """A notebook's code cells as one module (shell and magic lines dropped)."""
    with open(path) as f:
        cells = json.load(f)["cells"]
    lines = [line for cell in cells if cell["cell_type"] == "code"
             for line in "".join(cell["source"]).splitlines() if not line.lstrip()[:1] in "!%"]
    return ast.parse("\n".join(lines), path)


def test_every_module_is_on_a_rung():
    modules = {os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "*.py"))}
    assert modules == set(RUNGS), modules ^ set(RUNGS)


@pytest.mark.parametrize("module", sorted(RUNGS))
def test_top_level_imports_go_down_the_ladder(module):
    imports = project_imports(parse(os.path.join(ROOT, f"{module}.py")), top_level_only=True)
    upward = {name for name in imports if RUNGS[name] >= RUNGS[module]}
    assert not upward, f"{module}.py imports {upward} from its own rung or above"


def test_an_upsampler_knows_nothing_of_clip():
    # (clip.py itself is on rung 0: as a library it needs torch alone, its tokenizer included.)
    assert "clip" not in project_imports(parse(os.path.join(ROOT, "upsample.py")), False)


def test_no_circle_even_through_function_level_imports():
    graph = {m: project_imports(parse(os.path.join(ROOT, f"{m}.py")), False) - {m}
             for m in RUNGS}

    def visit(module, path):
        assert module not in path, "import circle: " + " -> ".join(path + [module])
        for name in graph[module]:
            visit(name, path + [module])
    for module in graph:
        visit(module, [])


def test_nothing_but_the_tests_imports_the_command_lines():
    files = [os.path.join(ROOT, f"{m}.py") for m in RUNGS if m not in ENTRY_POINTS]
    files += glob.glob(os.path.join(ROOT, "bench", "*.py"))
    files += glob.glob(os.path.join(ROOT, "notebooks", "*.py"))
    trees = [(path, parse(path)) for path in files]
    trees += [(path, notebook_code(path))
              for path in glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb"))]
    assert len(trees) > 20
    for path, tree in trees:
        used = project_imports(tree, top_level_only=False) & set(ENTRY_POINTS)
        assert not used, f"{os.path.relpath(path, ROOT)} imports {used}"
